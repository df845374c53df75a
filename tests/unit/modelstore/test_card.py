"""Release notes from a model card: the paragraph under its title, bounded for HA."""

from __future__ import annotations

from pathlib import Path

from services.modelstore.card import MAX_NOTES, release_notes, release_notes_in

REPO = Path(__file__).resolve().parents[3]


def test_the_paragraph_under_the_title() -> None:
    card = "# Model card: `x` 1.0.0\n\nFirst line of\n  the summary.\n\n| a | b |\n\nMore.\n"
    assert release_notes(card) == "First line of the summary."


def test_headings_tables_and_lists_are_skipped_until_prose() -> None:
    card = "# T\n\n| a | b |\n|---|---|\n\n- item\n\n## Sub\n\nProse here.\nstill.\n- list\n"
    assert release_notes(card) == "Prose here. still."


def test_long_notes_are_cut_at_a_word() -> None:
    notes = release_notes("# T\n\n" + "word " * 200)
    assert len(notes) <= MAX_NOTES
    assert notes.endswith("word…")


def test_no_card_or_no_prose_gives_nothing(tmp_path: Path) -> None:
    assert release_notes_in(tmp_path) == ""
    assert release_notes("# Only a title\n\n| a |\n") == ""


def test_the_shipped_occupancy_card() -> None:
    notes = release_notes_in(REPO / "models" / "artifacts" / "occupancy")
    assert notes.startswith("Room occupancy classifier for the Roost hub")
    assert len(notes) <= MAX_NOTES
