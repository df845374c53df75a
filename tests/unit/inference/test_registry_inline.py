"""Which session runs happen on the event loop: only those known to take microseconds.

Each test runs the real shipped occupancy model; only the CPU time a run reports is
replaced where the test needs a slow run (the point is the registry's choice, and a
real slow model would make the test slow)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from models.manifest import shipped_models_dir
from services.inference import registry as registry_module
from services.inference.registry import INLINE_SECONDS, LoadedModel, ModelRegistry

X = np.asarray([21.0, 27.0, 400.0, 700.0, 0.5, -0.8], dtype=np.float32)


class Recorder:
    """Wraps the real run: where each ran, and an optional reported CPU time."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.fake_cpu: float | None = None
        self._real = registry_module._run_timed

    def __call__(self, model: LoadedModel, batch: np.ndarray) -> tuple[np.ndarray, float, float]:
        self.threads.append(threading.current_thread().name)
        out, seconds, cpu = self._real(model, batch)
        return out, seconds, cpu if self.fake_cpu is None else self.fake_cpu

    def last_inline(self) -> bool:
        return self.threads[-1] == threading.main_thread().name


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(registry_module, "_run_timed", rec)
    return rec


@pytest.fixture
def loaded() -> Iterator[tuple[ModelRegistry, LoadedModel]]:
    reg = ModelRegistry(1)
    reg.load_directory(shipped_models_dir())
    yield reg, reg.get("occupancy")
    reg.close()


async def test_first_run_of_a_size_goes_to_the_pool_then_small_runs_inline(
    recorder: Recorder, loaded: tuple[ModelRegistry, LoadedModel]
) -> None:
    reg, model = loaded
    one = X[None, :]
    out_pool = await reg.run(model, one)
    assert not recorder.last_inline()  # unknown cost: never on the event loop
    out_inline = await reg.run(model, one)
    assert recorder.last_inline()
    np.testing.assert_array_equal(out_pool, out_inline)  # same answer either way
    # A size class never run before (64 rows) is unknown again: the pool.
    await reg.run(model, np.repeat(one, 64, axis=0))
    assert not recorder.last_inline()


async def test_a_slow_run_sends_its_size_back_to_the_pool_for_a_while(
    recorder: Recorder, loaded: tuple[ModelRegistry, LoadedModel]
) -> None:
    reg, model = loaded
    one = X[None, :]
    await reg.run(model, one)
    await reg.run(model, one)
    assert recorder.last_inline()
    recorder.fake_cpu = 40 * INLINE_SECONDS  # this run took long (e.g. a cold cache)
    await reg.run(model, one)
    recorder.fake_cpu = None
    # The next runs stay off the event loop although they are fast again: the slow run
    # decays (10 % a run), it is not forgotten after one quick run.
    for _ in range(10):
        await reg.run(model, one)
        assert not recorder.last_inline()
    for _ in range(40):
        await reg.run(model, one)
    assert recorder.last_inline()  # and it does come back


async def test_health_stats_count_every_run_inline_or_not(
    recorder: Recorder, loaded: tuple[ModelRegistry, LoadedModel]
) -> None:
    reg, model = loaded
    m = model.manifest
    for _ in range(5):
        await reg.run(model, X[None, :])
    assert recorder.threads.count(threading.main_thread().name) == 4
    assert len(reg.health.of(m.name, m.version)._runs) == 5
    assert reg.health.snapshot(m.name, m.version).latency_p50_seconds > 0
