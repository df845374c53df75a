"""RegistryReader-backed serving: follow the on-disk model registry and hot-swap sessions.

The update service writes the registry (``services/modelstore/registry.py``); this
service only reads it. Every ``poll_seconds`` (default 0.2 s) the watcher stats each
``<root>/<model>/state.json``; only when the file changed (inode, mtime or size; the
registry replaces it atomically, so every write is a new inode), or at least every
:data:`FORCE_READ_SECONDS` in case a change slipped by within the clock granularity,
it reads the state, and only a new ``generation`` is applied:

1. Load what the new state needs that is not loaded yet, off the event loop: the
   active version, and the candidate when the stage is shadow or ab. Versions that
   already serve (e.g. a candidate being promoted) are reused, not reloaded. Every
   ONNX file is sha256-verified against its manifest on load.
2. Swap: one assignment of a new :class:`~services.inference.registry.Serving`.
   In-flight requests finish on the sessions they hold; new ones use the new ones.
   Nothing is ever unloaded before its replacement is ready, so no request fails.

If the new active version fails to load, the model keeps serving what it served
(error logged, ``roost_inference_model_load_failures_total{model,role}``); if only the
candidate fails, the active version is applied and serves alone (the candidate shows
as not loaded). A failed generation is not retried until the registry changes again.
A candidate whose input schema differs from the active version's is refused the same
way (it could not run on the same inputs). Swaps are logged at INFO with versions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Counter, Gauge

from models.manifest import ManifestError
from services.inference.registry import LoadedModel, ModelRegistry, Serving, load_model
from services.kit.errors import RoostError
from services.modelstore.reader import STATE_FILE, RegistryReader, SlotState

log = logging.getLogger(__name__)

MODEL_GENERATION = Gauge(
    "roost_inference_model_generation",
    "RegistryReader generation of the model's slots that this service applied.",
    ["model"],
)
SWAPS = Counter(
    "roost_inference_swaps_total",
    "RegistryReader changes applied to what serves a model (active/candidate/stage).",
    ["model"],
)
LOAD_FAILURES = Counter(
    "roost_inference_model_load_failures_total",
    "Versions named by the registry that failed to load (the previous one kept serving).",
    ["model", "role"],
)
FORCE_READ_SECONDS = 2.0


class LoadFailed(Exception):
    """A version could not be loaded (message is safe to log: paths and hashes only)."""


class RegistryWatcher:
    def __init__(
        self, registry: ModelRegistry, disk: RegistryReader, poll_seconds: float = 0.2
    ) -> None:
        self._registry = registry
        self._disk = disk
        self._poll = poll_seconds
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._read_at: dict[str, float] = {}
        self._applied: dict[str, int] = {}
        self._bad_state: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.refresh()
            except Exception:
                log.exception("registry poll failed; retrying")

    async def refresh(self, *, force: bool = False) -> None:
        """One poll of every model in the registry (``force``: read every state.json even
        if its stat did not change)."""
        for name in self._disk.models():
            await self._check(name, force)

    async def _check(self, name: str, force: bool = False) -> None:
        path = self._disk.root / name / STATE_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        now = time.monotonic()
        fresh = now - self._read_at.get(name, -FORCE_READ_SECONDS) < FORCE_READ_SECONDS
        if not force and self._seen.get(name) == key and fresh:
            return
        self._seen[name] = key
        self._read_at[name] = now
        try:
            state = self._disk.state(name)
        except (RoostError, OSError) as e:
            if self._bad_state.get(name) != str(e):
                log.error("model %s: cannot read the registry state: %s", name, e)
                self._bad_state[name] = str(e)
            return
        self._bad_state.pop(name, None)
        if state.active is None or self._applied.get(name) == state.generation:
            return
        self._applied[name] = state.generation  # applied or failed: retried on next change
        await self._apply(name, state)

    async def _load(self, name: str, version: str) -> LoadedModel:
        try:
            model = await asyncio.to_thread(
                load_model, self._disk.version_dir(name, version), self._registry.providers
            )
        except (ManifestError, OSError, RoostError) as e:
            raise LoadFailed(str(e)) from None
        except Exception as e:  # onnxruntime raises its own types for a broken graph
            raise LoadFailed(f"{type(e).__name__}: {e}") from None
        m = model.manifest
        if (m.name, m.version) != (name, version):
            raise LoadFailed(f"registry {name} {version} holds {m.name} {m.version}")
        return model

    def _failed(self, name: str, version: str, role: str, error: LoadFailed) -> None:
        LOAD_FAILURES.labels(name, role).inc()
        log.error("model %s: %s %s failed to load: %s", name, role, version, error)

    async def _apply(self, name: str, state: SlotState) -> None:
        assert state.active is not None
        current = self._registry.find(name)
        loaded: dict[str, LoadedModel] = {}
        if current is not None:
            for model in (current.active, current.candidate):
                if model is not None:
                    loaded[model.manifest.version] = model
        active = loaded.get(state.active)
        if active is None:
            try:
                active = await self._load(name, state.active)
            except LoadFailed as e:
                self._failed(name, state.active, "active", e)
                return
        candidate: LoadedModel | None = None
        if state.candidate is not None and state.stage in ("shadow", "ab"):
            candidate = loaded.get(state.candidate)
            if candidate is None:
                try:
                    candidate = await self._load(name, state.candidate)
                except LoadFailed as e:
                    self._failed(name, state.candidate, "candidate", e)
            if candidate is not None and candidate.manifest.input != active.manifest.input:
                self._failed(
                    name,
                    state.candidate,
                    "candidate",
                    LoadFailed("its input schema differs from the active version's"),
                )
                candidate = None
        serving = Serving(
            active=active,
            candidate=candidate,
            candidate_version=state.candidate,
            stage=state.stage,
            share=state.share if state.stage == "ab" else 0.0,
            generation=state.generation,
        )
        self._registry.set_serving(serving)
        MODEL_GENERATION.labels(name).set(state.generation)
        SWAPS.labels(name).inc()
        log.info(
            "model %s: serving active %s, candidate %s (%s%s), generation %d",
            name,
            state.active,
            candidate.manifest.version if candidate is not None else "-",
            state.stage,
            f" {state.share:g}" if state.stage == "ab" else "",
            state.generation,
        )
