"""Leave-one-home-out of the routine model (``models.routine.cross_home``): abstention,
scoring with "unsure", per-home standardization, baselines and the protocol itself
(no held-out home's label or minute reaches training). The real figures come from
``python -m models.routine.cross_home`` on ../shared/data (docs/models.md)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.routine import cross_home as ch  # noqa: E402
from models.routine.data import CLASSES, Dataset  # noqa: E402
from models.routine.home_data import UNKNOWN  # noqa: E402
from models.routine.net import Hyper  # noqa: E402

TOILET, ASLEEP, IDLE = CLASSES.index("toilet"), CLASSES.index("asleep"), CLASSES.index("idle")


def _probs(rows: list[dict[int, float]]) -> np.ndarray:
    out = np.zeros((len(rows), len(CLASSES)), dtype=np.float32)
    for i, row in enumerate(rows):
        for c, p in row.items():
            out[i, c] = p
    return out


def test_abstains_only_on_unsure_short_activities() -> None:
    probs = _probs(
        [
            {TOILET: 0.45, IDLE: 0.35, ASLEEP: 0.2},  # short, unsure -> abstain
            {TOILET: 0.8, IDLE: 0.2},  # short, sure -> toilet
            {ASLEEP: 0.4, IDLE: 0.35, TOILET: 0.25},  # long, unsure -> still asleep
        ]
    )
    assert ch.abstain(probs, 0.5).tolist() == [ch.UNSURE, TOILET, ASLEEP]
    assert ch.abstain(probs, 0.0).tolist() == [TOILET, TOILET, ASLEEP]


def test_transitions_count_consecutive_annotated_minutes_only() -> None:
    starts = 60.0 * np.array([0, 1, 2, 3, 10, 11], dtype=np.float64)
    y = np.array([ASLEEP, ASLEEP, TOILET, UNKNOWN, IDLE, TOILET])
    d = Dataset(starts, np.zeros((6, 1), np.float32), y, np.zeros(6, dtype=np.int64))
    t = ch.transitions([d])
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    k = len(CLASSES)
    # asleep->asleep, asleep->toilet counted; toilet->unknown and the gap (3 -> 10) not.
    assert t[ASLEEP, ASLEEP] == pytest.approx(2 / (k + 2))
    assert t[ASLEEP, TOILET] == pytest.approx(2 / (k + 2))
    assert t[TOILET, IDLE] == pytest.approx(1 / k)
    assert t[IDLE, TOILET] == pytest.approx(2 / (k + 1))


def test_the_filter_is_causal_holds_a_sticky_state_and_restarts_at_gaps() -> None:
    k = len(CLASSES)
    sticky = np.full((k, k), 0.01 / (k - 1))
    np.fill_diagonal(sticky, 0.99)
    # Asleep for ten minutes, then minutes that lean (0.9) toward the toilet.
    probs = _probs([{ASLEEP: 0.9, IDLE: 0.1}] * 10 + [{TOILET: 0.9, ASLEEP: 0.1}] * 5)
    starts = 60.0 * np.arange(len(probs), dtype=np.float64)
    assert ch.smooth(probs, starts, sticky, 0.0) is probs  # strength 0: unchanged
    out = ch.smooth(probs, starts, sticky, 1.0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert out[10].argmax() == ASLEEP  # one weak minute does not flip a sticky state
    assert out[14].argmax() == TOILET  # five do
    # Causal: changing a later minute leaves every earlier belief as it was.
    later = probs.copy()
    later[11:] = _probs([{IDLE: 1.0}] * 4)
    np.testing.assert_array_equal(ch.smooth(later, starts, sticky, 1.0)[:11], out[:11])
    # A gap restarts the filter: the minute after it is the classifier's own.
    gapped = starts.copy()
    gapped[10:] += 3600.0
    np.testing.assert_allclose(ch.smooth(probs, gapped, sticky, 1.0)[10], probs[10], rtol=1e-6)


def test_unsure_costs_recall_but_never_precision() -> None:
    y = np.array([TOILET, TOILET, IDLE, IDLE])
    sure = ch.scores_over(y, np.array([TOILET, IDLE, IDLE, IDLE]), ("toilet", "idle"))
    unsure = ch.scores_over(y, np.array([TOILET, ch.UNSURE, IDLE, IDLE]), ("toilet", "idle"))
    # Asserting idle for the missed toilet costs idle's precision; abstaining does not.
    assert unsure["f1_idle"] == 1.0
    assert sure["f1_idle"] == pytest.approx(0.8)
    assert unsure["f1_toilet"] == sure["f1_toilet"] == pytest.approx(2 / 3)
    # Macro-F1 is over the classes the home has, not all eight.
    assert unsure["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)


def test_standardize_per_home_uses_only_the_homes_own_features() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack(
        [rng.poisson(30, 500), rng.poisson(2, 500), np.ones(500)]  # PIR, reed, constant
    ).astype(np.float32)
    z = ch.standardize_per_home(x)
    np.testing.assert_allclose(z[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1.0, atol=1e-4)
    assert (z[:, 2] == 0.0).all()
    assert z.dtype == np.float32


def _home(rng: np.random.Generator, n: int, scale: float, flip: bool = False) -> Dataset:
    """Class k is signalled by feature k, at a home-specific scale (a PIR home vs. a
    reed-switch home); minutes are consecutive, the first day is unannotated."""
    y = rng.integers(0, len(CLASSES), n)
    x = rng.normal(0.0, 0.3, (n, len(CLASSES) + 2)).astype(np.float32)
    x[np.arange(n), y] += 1.0
    x *= scale
    starts = 1_200_000_000.0 + 60.0 * np.arange(n)
    if flip:
        y[: n // 10] = UNKNOWN
    return Dataset(starts, ch.standardize_per_home(x), y, np.zeros(n, dtype=np.int64))


def test_leave_one_home_out_transfers_a_shared_signal_and_reports_baselines() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    sets = {
        "houseA": _home(rng, 800, 1.0, flip=True),
        "houseB": _home(rng, 800, 30.0),
        "houseC": _home(rng, 800, 0.1),
        "houseD": _home(rng, 400, 5.0),
    }
    hp = Hyper(epochs=6, batch_size=64, hidden=16, dropout=0.0)
    res = ch.leave_one_home_out(sets, hp, [0], tune=False, untouched=("houseD",))
    assert [r.home for r in res] == ["houseA", "houseB", "houseC", "houseD"]
    for r in res:
        assert r.classes == CLASSES
        assert r.model["macro_f1"] > 0.8, r
        # Neither baseline can see the signal.
        assert r.time_of_day["macro_f1"] < 0.3
        assert r.majority["macro_f1"] < 0.1
        assert r.unsure_share == 0.0
    table = ch.markdown(res, "t")
    assert table.count("| house") == 4


def test_the_held_out_home_never_reaches_training(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def spy(sets: list[Dataset], hp: Hyper, seeds: list[int]) -> list[torch.nn.Module]:
        seen.append(sum(len(d) for d in sets))
        for d in sets:
            assert (d.y != UNKNOWN).all()  # unannotated minutes never train
        return [torch.nn.Sequential(torch.nn.Linear(d.x.shape[1], len(CLASSES)))]

    monkeypatch.setattr(ch, "train", spy)
    rng = np.random.default_rng(4)
    sizes = {"houseA": 100, "houseB": 200, "houseC": 400}
    sets = {h: _home(rng, n, 1.0) for h, n in sizes.items()}
    ch.leave_one_home_out(sets, Hyper(), [0], tune=False)
    assert seen == [600, 500, 300]  # the two OTHER homes each time


def test_the_shipped_card_quotes_the_cross_home_evaluation() -> None:
    """The card states the leave-one-home-out figures, not only the same-apartment
    "other home" (issue 18); the template and the shipped card say the same."""
    from models.manifest import shipped_models_dir  # noqa: PLC0415
    from models.routine.card import CROSS_HOME_SECTION  # noqa: PLC0415

    card = (shipped_models_dir() / "routine" / "MODEL_CARD.md").read_text()
    assert CROSS_HOME_SECTION in card
    for home in ch.HELD_OUT:
        assert f"| {home} |" in CROSS_HOME_SECTION
    assert "not met" in CROSS_HOME_SECTION
