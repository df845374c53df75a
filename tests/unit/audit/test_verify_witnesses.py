"""``verify --witness-key K --min-witnesses N``: a bundle verifies only if enough of the
auditor's witnesses cosigned its checkpoint; missing, foreign or forged cosignatures
do not count."""

from __future__ import annotations

from services.audit.checkpoint import NoteSigner
from services.audit.cosignature import Cosigner
from services.audit.store import AuditStore
from tests.support.audit_bundles import export, rejects, sign, verify


def cosigner(name: str) -> Cosigner:
    return Cosigner.from_note_signer(NoteSigner.generate(name))


def text_of(note: str) -> str:
    return note.split("\n\n", maxsplit=1)[0] + "\n"


def test_enough_cosignatures_verify(shared_store: AuditStore, signer: NoteSigner) -> None:
    a, b = cosigner("w.test/a"), cosigner("w.test/b")
    note = sign(shared_store, signer)
    cosigned = note + a.cosign(text_of(note)) + b.cosign(text_of(note))
    lines = export(shared_store, cosigned)
    report = verify(lines, signer, witnesses=[a.verifier(), b.verifier()], min_witnesses=2)
    assert report.witnessed_by == ("w.test/a", "w.test/b")
    assert report.entries == shared_store.size()


def test_too_few_cosignatures_fail(shared_store: AuditStore, signer: NoteSigner) -> None:
    a, b = cosigner("w.test/a"), cosigner("w.test/b")
    note = sign(shared_store, signer)
    lines = export(shared_store, note + a.cosign(text_of(note)))
    rejects(
        lines,
        signer,
        "1 valid cosignature",
        witnesses=[a.verifier(), b.verifier()],
        min_witnesses=2,
    )
    # An uncosigned bundle fails as soon as one is required.
    rejects(
        export(shared_store, note), signer, "0 valid", witnesses=[a.verifier()], min_witnesses=1
    )


def test_a_forged_or_misplaced_cosignature_fails(
    shared_store: AuditStore, signer: NoteSigner
) -> None:
    a = cosigner("w.test/a")
    note = sign(shared_store, signer)
    older = sign(shared_store, signer, size=3)
    # A real cosignature, but of another checkpoint of this log.
    moved = export(shared_store, note + a.cosign(text_of(older)))
    rejects(moved, signer, "does not verify", witnesses=[a.verifier()], min_witnesses=1)
    # A line in the witness's name by a key the auditor did not pin does not count.
    impostor = cosigner("w.test/a")
    forged = export(shared_store, note + impostor.cosign(text_of(note)))
    rejects(forged, signer, "0 valid", witnesses=[a.verifier()], min_witnesses=1)
