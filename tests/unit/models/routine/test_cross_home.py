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


def test_track_dropout_blanks_whole_tracks_of_a_copy_never_the_time_of_day() -> None:
    from models.routine.spec import CROSS_HOME_VOCABULARY  # noqa: PLC0415

    names = [n for n, _ in CROSS_HOME_VOCABULARY.layout()]
    drop = ch.TrackDropout.of(CROSS_HOME_VOCABULARY, 0.5)
    assert drop.track[names.index("hour_sin")] == drop.track[names.index("hour_cos")] == -1
    # All five inputs of a track share its index; two tracks do not.
    door = [drop.track[names.index(f"any.door.{n}")] for n in ("active", "recency")]
    assert door[0] == door[1] != drop.track[names.index("kitchen.any.active")]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(names))).astype(np.float32) + 3.0
    y = rng.integers(0, len(CLASSES), 400)
    xa, ya = drop.augment(x, y, seed=1)
    assert xa.shape == (800, len(names))
    assert (ya == np.concatenate([y, y])).all()
    np.testing.assert_array_equal(xa[:400], x)  # the originals are kept as they are
    copy = xa[400:]
    for t in range(int(drop.track.max()) + 1):
        cols = drop.track == t
        blank = (copy[:, cols] == 0).all(axis=1)
        kept = (copy[:, cols] == x[:, cols]).all(axis=1)
        assert (blank | kept).all()  # a track is blanked whole or not at all
        assert 0.35 < blank.mean() < 0.65
    time = drop.track == -1
    np.testing.assert_array_equal(copy[:, time], x[:, time])
    np.testing.assert_array_equal(drop.augment(x, y, seed=1)[0], xa)  # seeded
    assert not np.array_equal(drop.augment(x, y, seed=2)[0], xa)
    none = ch.TrackDropout.of(CROSS_HOME_VOCABULARY, 0.0)
    assert none.augment(x, y, seed=1)[0] is x  # p = 0: no copy


@pytest.mark.parametrize("bad", ["-0.1", "1", "1.5", "nan", "x"])
def test_a_bad_track_dropout_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ch.main(["--track-dropout", bad, "--data-dir", "/nonexistent"])
    assert exit_.value.code == 2
    assert "--track-dropout" in capsys.readouterr().err


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
    res = ch.leave_one_home_out(sets, hp, [0], tune_threshold=False, untouched=("houseD",))
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

    def spy(
        sets: list[Dataset], hp: Hyper, seeds: list[int], *, drop: object = None
    ) -> list[torch.nn.Module]:
        seen.append(sum(len(d) for d in sets))
        for d in sets:
            assert (d.y != UNKNOWN).all()  # unannotated minutes never train
        return [torch.nn.Sequential(torch.nn.Linear(d.x.shape[1], len(CLASSES)))]

    monkeypatch.setattr(ch, "train", spy)
    rng = np.random.default_rng(4)
    sizes = {"houseA": 100, "houseB": 200, "houseC": 400}
    sets = {h: _home(rng, n, 1.0) for h, n in sizes.items()}
    ch.leave_one_home_out(sets, Hyper(), [0], tune_threshold=False)
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
