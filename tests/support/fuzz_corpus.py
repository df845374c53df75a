"""The MQTT fuzz corpus (``tests/fuzz/mqtt/corpus.toml``): hostile and broken messages,
each with the drop reason the hub must count it under."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parents[1] / "fuzz" / "mqtt"
_REPEAT = re.compile(r"\{(.)\*(\d+)\}")


@dataclass(frozen=True)
class FuzzEntry:
    name: str
    topic: str
    payload: bytes
    reason: str
    # False if the broker refuses to carry it (e.g. a control character in the topic).
    mqtt: bool = True


def _expand(text: str) -> str:
    """``{c*N}`` -> ``c`` repeated ``N`` times."""
    return _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), text)


def _payload(raw: dict[str, str]) -> bytes:
    if "text" in raw:
        return _expand(raw["text"]).encode("utf-8", "surrogatepass")
    if "hex" in raw:
        return bytes.fromhex(raw["hex"])
    return (CORPUS_DIR / raw["file"]).read_bytes()


def load_corpus() -> list[FuzzEntry]:
    doc = tomllib.loads((CORPUS_DIR / "corpus.toml").read_text())
    return [
        FuzzEntry(e["name"], _expand(e["topic"]), _payload(e), e["reason"], e.get("mqtt", True))
        for e in doc["entry"]
    ]
