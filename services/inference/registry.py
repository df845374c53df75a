"""The loaded models: what serves each model name right now, and the sessions.

Sessions run on a small thread pool, except runs that the model's recent runs show
take at most ``INLINE_SECONDS`` (a handful of rows of a small model): those run on the
event loop, cheaper than the hop to the pool and back. Shadow runs of a candidate go to
a separate one-thread pool, so they never queue ahead of the active path.

The registry maps each model name to a :class:`Serving`: an immutable snapshot of the
active version, the candidate (if one is loaded for shadow or A/B) and the
rollout stage. A hot swap builds the new snapshot with every session already loaded
and replaces the entry in one dict assignment; a request reads the entry once, so it
finishes on the sessions it started with while later requests use the new ones, and
no request is ever without a model. The registry is filled either from a plain
directory (:meth:`ModelRegistry.from_directory`, tests and tools) or from the on-disk
model registry by ``services.inference.watcher``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from prometheus_client import Gauge, Histogram

from models.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest
from models.onnx_runtime import CPU, open_session, ort, provider_of
from services.inference.health import HealthBook
from services.kit.errors import NotFound, echo

log = logging.getLogger(__name__)

RUN_SECONDS = Histogram(
    "roost_inference_session_run_seconds",
    "onnxruntime session.run time per call (a batch is one call).",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
# A run expected to take at most this long (from the model's recent runs) is done on
# the event loop; longer ones, and a model's first run, go to the worker pool. Measured
# (bench/cost_calls.py): the round trip to the pool cost more CPU than a small run.
INLINE_SECONDS = 0.0005
MODELS_LOADED = Gauge("roost_inference_models_loaded", "Models loaded and serving.")


@dataclass
class LoadedModel:
    manifest: Manifest
    session: ort.InferenceSession
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def execution_provider(self) -> str:
        """The onnxruntime execution provider this version runs on."""
        return provider_of(self.session)


def ab_position(model: str, candidate_version: str, entity_id: str) -> float:
    """Where an entity falls in [0, 1) for A/B routing: stable per (model, candidate
    version, entity), uniform over entities, independent between rollouts."""
    digest = hashlib.sha256(f"{model}|{candidate_version}|{entity_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


@dataclass(frozen=True)
class Serving:
    """What serves one model: replaced as a whole, never changed in place.

    ``candidate`` is loaded only in shadow and A/B; ``candidate_version`` is what the
    registry names (also when staged, or when it failed to load).
    """

    active: LoadedModel
    candidate: LoadedModel | None = None
    candidate_version: str | None = None
    stage: str = "none"
    share: float = 0.0
    generation: int = 0

    @property
    def name(self) -> str:
        return self.active.manifest.name

    @property
    def shadow(self) -> LoadedModel | None:
        """The candidate to run in the background, if the stage is shadow."""
        return self.candidate if self.stage == "shadow" else None

    def routes_to_candidate(self, entity_id: str) -> bool:
        """A/B: the entity is served by the candidate iff its position < share.
        Requests without an entity id always go to the active version."""
        if self.stage != "ab" or self.candidate is None or not entity_id:
            return False
        version = self.candidate.manifest.version
        return ab_position(self.name, version, entity_id) < self.share

    def version(self, version: str) -> LoadedModel:
        """The loaded model of an exact version (active or loaded candidate)."""
        for model in (self.active, self.candidate):
            if model is not None and model.manifest.version == version:
                return model
        serving = self.active.manifest.version
        raise NotFound(f"version: '{self.name}' {echo(version)} is not loaded (serving {serving})")


def load_model(model_dir: Path, providers: Sequence[str] = (CPU,)) -> LoadedModel:
    """The model of ``model_dir`` on the first available of ``providers`` (then CPU)."""
    manifest = load_manifest(model_dir)
    session = open_session(model_dir / manifest.file, providers=providers)
    inputs = {i.name: i for i in session.get_inputs()}
    if manifest.input.name not in inputs:
        raise ManifestError(
            f"{model_dir}: ONNX has no input '{manifest.input.name}' (has {sorted(inputs)})"
        )
    outputs = {o.name for o in session.get_outputs()}
    if manifest.output_name not in outputs:
        raise ManifestError(f"{model_dir}: ONNX has no output '{manifest.output_name}'")
    return LoadedModel(manifest=manifest, session=session)


class ModelRegistry:
    def __init__(
        self,
        threads: int = 1,
        health: HealthBook | None = None,
        providers: Sequence[str] = (CPU,),
    ) -> None:
        self._serving: dict[str, Serving] = {}
        #: The onnxruntime execution providers models are loaded with, in preference.
        self.providers = tuple(providers)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnxruntime")
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        # Seconds of recent runs per (model, version, size class): which runs are short
        # enough to do on the event loop (INLINE_SECONDS).
        self._recent_seconds: dict[tuple[str, str, int], float] = {}
        self.health = health if health is not None else HealthBook()

    @classmethod
    def from_directory(cls, root: Path, threads: int = 1) -> ModelRegistry:
        """Load every ``<root>/<name>/manifest.json``. A broken model is logged and skipped."""
        registry = cls(threads)
        registry.load_directory(root)
        return registry

    def load_directory(self, root: Path) -> None:
        """Serve every model of ``<root>/<name>/manifest.json`` (broken ones are skipped)."""
        for manifest_path in sorted(root.glob(f"*/{MANIFEST_FILE}")):
            try:
                self.put(load_model(manifest_path.parent, self.providers))
            except (ManifestError, OSError, ort.capi.onnxruntime_pybind11_state.Fail) as e:
                log.error("skipping model in %s: %s", manifest_path.parent, e)
        if not self._serving:
            log.warning("no models loaded from %s", root)

    def put(self, model: LoadedModel) -> None:
        """Serve ``model`` as the active version of its name, without a candidate."""
        self.set_serving(Serving(active=model))
        m = model.manifest
        log.info("loaded model %s %s (sha256 %s)", m.name, m.version, m.sha256[:12])

    def set_serving(self, serving: Serving) -> None:
        """Swap what serves ``serving.name``: one assignment (see the module docstring).
        A candidate that changes stage (shadow -> A/B) starts a fresh health window."""
        old = self._serving.get(serving.name)
        if (
            old is not None
            and serving.candidate is not None
            and old.candidate_version == serving.candidate_version
            and old.stage != serving.stage
        ):
            self.health.reset(serving.name, serving.candidate.manifest.version)
        self._serving[serving.name] = serving
        MODELS_LOADED.set(len(self._serving))
        versions = {serving.active.manifest.version}
        if serving.candidate is not None:
            versions.add(serving.candidate.manifest.version)
        self.health.retain(serving.name, versions)

    def serving(self, name: str) -> Serving:
        serving = self._serving.get(name)
        if serving is None:
            loaded = sorted(self._serving)
            raise NotFound(f"model_name: {echo(name)} is not loaded (loaded: {loaded})")
        return serving

    def find(self, name: str) -> Serving | None:
        return self._serving.get(name)

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The active version of ``name``, or the exact ``version`` if it is loaded."""
        serving = self.serving(name)
        return serving.version(version) if version else serving.active

    def all(self) -> list[LoadedModel]:
        """The active version of every model, by name."""
        return [self._serving[name].active for name in sorted(self._serving)]

    async def run(
        self, model: LoadedModel, batch: npt.NDArray[np.generic]
    ) -> npt.NDArray[np.float32]:
        """Run one batch (leading batch dimension) off the event loop."""
        return await self._run_on(self._pool, model, batch)

    async def run_shadow(
        self, model: LoadedModel, batch: npt.NDArray[np.generic]
    ) -> tuple[npt.NDArray[np.float32], float]:
        """Like :meth:`run`, on the shadow pool (never ahead of the active path); also
        its cost (see :func:`run_cost`)."""
        loop = asyncio.get_running_loop()
        out, seconds, cpu = await loop.run_in_executor(self._shadow_pool, _run_timed, model, batch)
        m = model.manifest
        self.health.of(m.name, m.version).run(seconds)
        return out, run_cost(model, seconds, cpu)

    async def time_shadow(self, model: LoadedModel, batch: npt.NDArray[np.generic]) -> float:
        """The cost of ``model`` on ``batch`` on the shadow pool (see :func:`run_cost`),
        not recorded in its own stats: the active version timed on the batch a candidate
        shadowed (a paired latency, see ``services.inference.health``)."""
        loop = asyncio.get_running_loop()
        _, seconds, cpu = await loop.run_in_executor(self._shadow_pool, _run_timed, model, batch)
        return run_cost(model, seconds, cpu)

    async def _run_on(
        self, pool: ThreadPoolExecutor, model: LoadedModel, batch: npt.NDArray[np.generic]
    ) -> npt.NDArray[np.float32]:
        m = model.manifest
        # Runs of a similar size (rows within a factor of two) take similar time.
        key = (m.name, m.version, len(batch).bit_length())
        recent = self._recent_seconds.get(key)
        if recent is not None and recent <= INLINE_SECONDS:
            # Known to take microseconds: a hop to the pool and back would cost more
            # CPU than the run itself (and delays the answer by two thread wake-ups).
            out, seconds, cpu = _run_timed(model, batch)
        else:
            loop = asyncio.get_running_loop()
            out, seconds, cpu = await loop.run_in_executor(pool, _run_timed, model, batch)
        # The costliest recent run (decaying), so one fast run does not let a model that
        # can be slow block the event loop.
        took = run_cost(model, seconds, cpu)
        self._recent_seconds[key] = max(took, 0.9 * recent) if recent is not None else took
        self.health.of(m.name, m.version).run(seconds)
        return out

    @staticmethod
    def run_sync(model: LoadedModel, batch: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        return _run_timed(model, batch)[0]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._shadow_pool.shutdown(wait=True)


def run_cost(model: LoadedModel, seconds: float, cpu: float) -> float:
    """What one run cost the machine: on the CPU provider its CPU time on the calling
    thread (sessions run single-threaded, see ``models.onnx_runtime``; a run preempted
    or kept waiting for the GIL on a busy machine is not a slow run), on an accelerator
    its wall time (the thread waits for the device)."""
    return cpu if model.execution_provider == CPU else seconds


def _run_timed(
    model: LoadedModel, batch: npt.NDArray[np.generic]
) -> tuple[npt.NDArray[np.float32], float, float]:
    """session.run, its duration (the latency the health stats report) and the CPU time
    it took on this thread (sessions run their operators on the calling thread)."""
    m = model.manifest
    started, cpu_started = time.perf_counter(), time.thread_time()
    (out,) = model.session.run([m.output_name], {m.input.name: batch})
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    RUN_SECONDS.labels(m.name).observe(seconds)
    return np.asarray(out, dtype=np.float32).reshape(len(batch), -1), seconds, cpu


def stack(arrays: Sequence[npt.NDArray[np.generic]]) -> npt.NDArray[np.generic]:
    return np.stack(arrays) if arrays else np.empty((0,))
