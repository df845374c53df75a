"""The anomaly model card (``models.anomaly.card``): attribution, and the shipped
MODEL_CARD.md is exactly what the template renders from the shipped manifest."""

from __future__ import annotations

import pytest

from models.anomaly.data import ApplianceData
from models.manifest import Manifest, shipped_models_dir

MODEL_DIR = shipped_models_dir() / "anomaly"


def test_model_card_attribution() -> None:
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "CC BY 4.0" in card
    assert "Candanedo, L.M., Feldheim, V., Deramaix, D. (2017)" in card
    assert "Energy and Buildings 140" in card


def test_the_shipped_card_is_the_rendered_template(manifest: Manifest, data: ApplianceData) -> None:
    pytest.importorskip("torch")  # the card describes the recipe's Hyper
    from models.anomaly.card import CardContext, model_card  # noqa: PLC0415
    from models.anomaly.net import Hyper  # noqa: PLC0415
    from models.anomaly.train import INT8_MAX_DROP, INT8_SPEEDUP  # noqa: PLC0415

    served = next(v for v, info in manifest.variants.items() if info.file == manifest.file)
    ctx = CardContext(
        data=data,
        hp=Hyper(epochs=int(manifest.metrics["epochs"])),
        served=served,
        int8_speedup=INT8_SPEEDUP,
        int8_max_drop=INT8_MAX_DROP,
    )
    assert model_card(manifest, ctx) == (MODEL_DIR / "MODEL_CARD.md").read_text()
