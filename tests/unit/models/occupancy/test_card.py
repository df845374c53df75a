"""The occupancy model card (``models.occupancy.card``): the shipped MODEL_CARD.md is
exactly what the template renders from the shipped manifest and the data."""

from __future__ import annotations

import pytest

from models.datasets import DatasetMissing, load_occupancy
from models.manifest import Manifest, shipped_models_dir
from tests.support.shared_data import DATA_DIR, MISSING

pytest.importorskip("torch")  # the card names the recipe's network widths

from models.occupancy.card import CardContext, model_card
from models.occupancy.train import INT8_MAX_ACCURACY_LOSS

MODEL_DIR = shipped_models_dir() / "occupancy"


def test_the_shipped_card_is_the_rendered_template(manifest: Manifest) -> None:
    if DATA_DIR is None:
        pytest.skip(MISSING)
    try:
        train, test = load_occupancy("train", DATA_DIR), load_occupancy("test", DATA_DIR)
    except DatasetMissing as e:
        pytest.skip(str(e))
    m = manifest.metrics
    cut = round(len(train) * (1.0 - m["holdout_fraction"]))
    ctx = CardContext(
        size_bytes=manifest.variants["fp32"].size_bytes,
        train_data=train,
        test_data=test,
        holdout_start_ts=float(train.ts[cut]),
        holdout_false_occupied=int(m["holdout_false_occupied"]),
        holdout_false_vacant=int(m["holdout_false_vacant"]),
        int8_max_accuracy_loss=INT8_MAX_ACCURACY_LOSS,
    )
    assert model_card(manifest, ctx) == (MODEL_DIR / "MODEL_CARD.md").read_text()
