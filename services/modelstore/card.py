"""Release notes from a model card: the paragraph under its title.

Home Assistant's update entity shows at most 255 characters of release summary, so the
notes are the card's first paragraph of prose (no heading, table or list), whitespace
collapsed, cut at a word to at most :data:`MAX_NOTES` characters.
"""

from __future__ import annotations

from pathlib import Path

from services.modelstore.bundle import CARD_FILES

MAX_NOTES = 240
# A card is a few KB; more is not read.
MAX_CARD_BYTES = 64 * 1024


def release_notes(card: str, limit: int = MAX_NOTES) -> str:
    """The first prose paragraph of ``card`` (markdown), at most ``limit`` characters."""
    paragraph: list[str] = []
    for raw in card.splitlines():
        line = raw.strip()
        if not line:
            if paragraph:
                break
            continue
        if line.startswith(("#", "|", "-", "*", "```", "!", ">")):
            if paragraph:
                break
            continue
        paragraph.append(line)
    text = " ".join(" ".join(paragraph).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


def release_notes_in(directory: Path) -> str:
    """The notes of the model card in ``directory`` (the first of ``CARD_FILES``), or ""."""
    for name in CARD_FILES:
        path = directory / name
        if path.is_file():
            with path.open("rb") as f:
                head = f.read(MAX_CARD_BYTES)
            return release_notes(head.decode("utf-8", errors="replace"))
    return ""
