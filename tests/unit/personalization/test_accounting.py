"""Privacy accounting: one mechanism's epsilon and a composed history's are exactly what
Opacus' accountants compute; PRV falls back to the RDP bound (and says so) when it would
be too costly; stored per-step curves are used only if they were stored for these orders."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant  # type: ignore[import-untyped]

from services.kit.errors import InvalidArgument
from services.personalization.accounting import (
    ORDERS,
    ORDERS_DIGEST,
    Charge,
    compose,
    mechanism_epsilon,
    stored_rdp,
    unit_rdp,
)

DELTA = 1e-5


def charge(noise: float, rate: float, steps: int) -> Charge:
    return Charge(noise, rate, steps, unit_rdp(noise, rate))


def opacus(accountant: Any, history: list[tuple[float, float, int]]) -> float:
    """Opacus' own epsilon at DELTA for ``history``."""
    accountant.history = list(history)
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_one_mechanism_is_what_opacus_says(name: str) -> None:
    direct = opacus(RDPAccountant() if name == "rdp" else PRVAccountant(), [(1.1, 0.01, 500)])
    assert mechanism_epsilon(1.1, 0.01, 500, DELTA, name) == pytest.approx(direct, rel=1e-12)
    # No step ran: nothing spent.
    assert mechanism_epsilon(1.1, 0.01, 0, DELTA, name) == 0.0


def test_a_composed_history_is_what_opacus_says() -> None:
    history = [(1.0, 0.02, 100), (0.9, 0.005, 400), (6.0, 1.0, 1), (1.0, 0.02, 100)]
    charges = [charge(*h) for h in history]
    eps, used = compose(charges, delta=DELTA, accountant="rdp")
    assert used == "rdp"
    assert eps == pytest.approx(opacus(RDPAccountant(), history), rel=1e-9)
    eps, used = compose(charges, delta=DELTA, accountant="prv")
    assert used == "prv"
    # Opacus merges identical (noise, rate) pairs into one PRV, as compose does.
    merged = [(0.9, 0.005, 400), (1.0, 0.02, 200), (6.0, 1.0, 1)]
    assert eps == pytest.approx(opacus(PRVAccountant(), merged), rel=1e-9)
    # Charges with no steps left (released) do not count; nothing charged is 0.
    assert compose([*charges, charge(0.5, 0.5, 0)], delta=DELTA, accountant="rdp")[0] == (
        pytest.approx(opacus(RDPAccountant(), history), rel=1e-9)
    )
    assert compose([], delta=DELTA, accountant="prv") == (0.0, "prv")


def test_prv_too_costly_falls_back_to_the_rdp_bound_and_says_so() -> None:
    extreme = [charge(1e-4, 0.5, 10)]
    eps, used = compose(extreme, delta=DELTA, accountant="prv")
    assert used == "rdp"
    assert eps == compose(extreme, delta=DELTA, accountant="rdp")[0]
    assert math.isfinite(eps)


def test_stored_curves_are_used_only_for_the_same_orders() -> None:
    curve = unit_rdp(1.3, 0.02)
    assert len(curve) == len(ORDERS)
    fake = np.full(len(ORDERS), 7.0, dtype="<f8")
    assert stored_rdp(fake.tobytes(), ORDERS_DIGEST, 1.3, 0.02).tolist() == fake.tolist()
    # Another digest, or another length: recomputed, never misread.
    assert stored_rdp(fake.tobytes(), "0" * 16, 1.3, 0.02).tolist() == curve.tolist()
    assert stored_rdp(fake[:-1].tobytes(), ORDERS_DIGEST, 1.3, 0.02).tolist() == curve.tolist()


def test_a_curve_opacus_cannot_compute_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="mechanism"):
        unit_rdp(1.0, 2.0)  # a sampling rate above 1
