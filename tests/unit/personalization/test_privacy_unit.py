"""The household-day privacy unit: per-day clipping bounds a whole day's contribution
(however many rows it has), days are what is sampled and accounted, δ comes from the
largest possible number of days, and the unit is shown with ε."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from opacus import GradSampleModule  # type: ignore[import-untyped]  # noqa: E402

from models.manifest import shipped_models_dir  # noqa: E402
from services.kit.errors import FailedPrecondition  # noqa: E402
from services.modelstore.registry import Registry  # noqa: E402
from services.personalization import worker  # noqa: E402
from services.personalization.config import PersonalizationConfig  # noqa: E402
from services.personalization.dp_sgd import (  # noqa: E402
    logits_of,
    make_day_stepper,
    training_rows,
)
from services.personalization.finetune import (  # noqa: E402
    dp_finetune,
    hyper_parameters,
    set_trainable,
)
from services.personalization.job_manager import JobManager  # noqa: E402
from services.personalization.job_table import JobTable  # noqa: E402
from services.personalization.ledger import PrivacyLedger  # noqa: E402
from services.personalization.onnx_roundtrip import base_model  # noqa: E402
from services.personalization.privacy_unit import (  # noqa: E402
    check_units,
    day_of,
    derived_delta,
    max_units,
)
from services.personalization.store import ExampleStore, NewExample  # noqa: E402

CLIP = 1.0


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return base_model("occupancy", shipped_models_dir() / "occupancy" / "occupancy.onnx")


def _rows(base: torch.nn.Module, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows around the model's input statistics, labelled against the model (large
    gradients: the clipping binds)."""
    rng = np.random.default_rng(seed)
    x = (base.mean.numpy() + base.std.numpy() * rng.standard_normal((n, 6))).astype(np.float32)
    with torch.no_grad():
        y = 1 - base(torch.from_numpy(x)).numpy().argmax(axis=1)
    return x, y.astype(np.int64)


def _per_example_grads(base: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> list[torch.Tensor]:
    net = copy.deepcopy(base).train()  # Opacus captures activations in training mode
    for p in net.parameters():
        p.requires_grad_(True)
    torch.manual_seed(0)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return logits_of(self.net, t)

    model = GradSampleModule(Logits(), loss_reduction="sum")
    loss = torch.nn.functional.cross_entropy(
        model(torch.from_numpy(x)), torch.from_numpy(y), reduction="sum"
    )
    loss.backward()
    return [p.grad_sample.detach() for p in net.parameters() if p.requires_grad]


def _update(base: torch.nn.Module, days: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
    """The service's day-level step without noise on every day (the update before noise:
    the clipped sum of the days' mean gradients), flat."""
    net = copy.deepcopy(base).train()
    params = set_trainable(net, "all")
    rows = training_rows(
        np.concatenate([d[0] for d in days]), np.concatenate([d[1] for d in days]), None, None
    )
    unit = torch.cat([torch.full((len(d[1]),), i, dtype=torch.int64) for i, d in enumerate(days)])
    stepper = make_day_stepper(
        net, params, rows, unit, noise_multiplier=0.0, lr=1e-3, max_grad_norm=CLIP,
        expected_batch_size=1, distill_weight=0.0, class_weights=None,
        noise_gen=torch.Generator().manual_seed(0),
    )  # fmt: skip
    stepper.step(torch.arange(len(days)))
    return torch.cat([p.grad.flatten() for p in params])


def test_a_day_of_10000_rows_moves_the_update_no_more_than_a_day_of_10(
    base: torch.nn.Module,
) -> None:
    ordinary = [_rows(base, 40, seed) for seed in range(5)]
    big, small = _rows(base, 10_000, 100), _rows(base, 10, 101)
    without = _update(base, ordinary)
    moved_big = float((_update(base, [*ordinary, big]) - without).norm())
    moved_small = float((_update(base, [*ordinary, small]) - without).norm())
    # Each day's term is clipped to CLIP, whatever its size: the sensitivity is CLIP.
    assert moved_big <= CLIP * (1 + 1e-4)
    assert moved_small <= CLIP * (1 + 1e-4)
    # The clip binds (these rows pull hard): the bound is met, not vacuous.
    assert moved_big >= 0.99 * CLIP
    # Clipping per example instead would let the big day move the sum ~10,000 times more.
    grads = _per_example_grads(base, *big)
    flat = torch.cat([g.reshape(len(g), -1) for g in grads], dim=1)
    per_example = flat * (CLIP / (flat.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
    assert float(per_example.sum(dim=0).norm()) > 100 * CLIP


def test_day_level_training_samples_and_accounts_days(base: torch.nn.Module) -> None:
    x, y = _rows(base, 600, 0)
    days = np.repeat(np.arange(12), 50)
    replay = _rows(base, 600, 1)
    hyper = hyper_parameters("occupancy", "day")
    res = dp_finetune(
        base,
        x,
        y,
        target_epsilon=4.0,
        delta=1e-3,
        epochs=2,
        expected_batch_size=int(hyper["expected_batch_size"]),
        max_grad_norm=CLIP,
        lr=float(hyper["lr"]),
        accountant="rdp",
        distill_weight=1.0,
        replay=replay,
        days=days,
    )
    # 12 private days and as many public pseudo-days: the sample rate is over units.
    assert (res.unit, res.n_units) == ("day", 12)
    assert res.sample_rate == pytest.approx(int(hyper["expected_batch_size"]) / 24)
    assert 0 < res.epsilon <= 4.0
    # The service reserves exactly this mechanism for these inputs.
    plan = worker.make_plan(
        "occupancy",
        n_private=600,
        n_replay=600,
        target_epsilon=4.0,
        delta=1e-3,
        accountant="rdp",
        epochs=2,
        unit="day",
        n_days=12,
    )
    assert (plan.noise_multiplier, plan.sample_rate, plan.steps) == (
        res.noise_multiplier,
        res.sample_rate,
        res.steps,
    )
    with pytest.raises(ValueError, match="days"):
        dp_finetune(
            base, x, y, target_epsilon=4.0, delta=1e-3, epochs=1, expected_batch_size=4,
            max_grad_norm=CLIP, lr=1e-3, accountant="rdp", days=days[:-1],
        )  # fmt: skip


def test_delta_comes_from_the_largest_possible_number_of_units() -> None:
    # A 90-day retention touches at most 91 UTC days.
    assert max_units("day", 90) == 91
    assert derived_delta("day", 90) == 1e-3 <= 1 / (10 * 91)
    assert derived_delta("example", 90) == 1e-7 <= 1 / (10 * 91 * 1440)
    config = PersonalizationConfig()
    assert (config.privacy_unit, config.budget_delta) == ("day", 1e-3)
    assert PersonalizationConfig(delta=1e-6).budget_delta == 1e-6
    with pytest.raises(ValueError, match="privacy_unit"):
        PersonalizationConfig(privacy_unit="week")
    check_units("day", 100, 1e-3)
    with pytest.raises(FailedPrecondition, match="101 days"):
        check_units("day", 101, 1e-3)


def test_days_are_utc_calendar_days(tmp_path: Path) -> None:
    midnight = datetime(2026, 3, 1, tzinfo=UTC)
    times = [midnight - timedelta(minutes=1), midnight, midnight + timedelta(hours=23)]
    with ExampleStore.open(tmp_path / "examples.db") as store:
        store.add(
            "occupancy",
            [
                NewExample(np.full(6, i, dtype=np.float32), "occupied", "sensor", t)
                for i, t in enumerate(times)
            ],
        )
        snap = store.snapshot("occupancy")
        assert store.day_count("occupancy", snap.max_seq) == 2
        assert store.day_count("occupancy", snap.max_seq - 1) == 2
        assert store.day_count("occupancy", snap.max_seq - 2) == 1
        _, _, observed = store.load_observed("occupancy", ["vacant", "occupied"], [6])
    assert len(set(day_of(observed).tolist())) == 2
    assert day_of([-1, 0, 86_400_000_000]).tolist() == [-1, 0, 1]


async def test_a_run_with_more_units_than_delta_allows_is_refused_before_any_charge(
    config: PersonalizationConfig,
    registry: Registry,
    store: ExampleStore,
    ledger: PrivacyLedger,
    job_table: JobTable,
    tmp_path: Path,
) -> None:
    async def stage(model: str, bundle: bytes, signature: bytes) -> tuple[str, str, str]:
        raise AssertionError("no staging here")

    # The ledger's delta is 1e-5: at most 10,000 examples per run for the example unit.
    example_unit = dataclasses.replace(config, privacy_unit="example")
    manager = JobManager(
        example_unit,
        store=store,
        ledger=ledger,
        jobs=job_table,
        registry=registry,
        stage=stage,
        signing_key_path=tmp_path / "absent.pem",
    )
    # Recent rows: older ones would be past retention, pruned before the run is planned.
    t0 = datetime.now(UTC) - timedelta(days=1)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((10_001, 6)).astype(np.float32)
    store.add(
        "occupancy",
        [
            NewExample(row, "occupied", "sensor", t0 + timedelta(seconds=i))
            for i, row in enumerate(rows)
        ],
    )
    try:
        with pytest.raises(FailedPrecondition, match="10001 examples, more than 1/"):
            await manager.start("occupancy", 1.0, 0)
        assert ledger.history("household") == []
    finally:
        await manager.close()
