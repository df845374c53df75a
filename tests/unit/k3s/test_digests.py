"""Every image is pinned by digest; a tag-only reference is refused, and so is the
documented placeholder before an overlay is applied (``make k3s-check``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.k3s import (
    DIGEST,
    K3S,
    PLACEHOLDER_DIGEST,
    RENDERINGS,
    ROOT,
    digest_problems,
    find_kubectl,
    images,
    main,
    overlay_copy,
    render,
    yaml_module,
)


@pytest.mark.parametrize("overlay", RENDERINGS)
def test_no_image_is_referenced_by_tag_only(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    assert images(objs), overlay
    assert digest_problems(objs, placeholder_ok=True) == []


def _deploy(image: str) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}},
    }


@pytest.mark.parametrize(
    ("image", "placeholder_ok", "refused"),
    [
        ("localhost/roost-hub:0.1.0", True, True),
        ("docker.io/library/eclipse-mosquitto:2.0.22", True, True),
        ("eclipse-mosquitto", True, True),
        ("eclipse-mosquitto:latest", True, True),
        (f"localhost/roost-hub:0.1.0@{PLACEHOLDER_DIGEST}", True, False),
        (f"localhost/roost-hub:0.1.0@{PLACEHOLDER_DIGEST}", False, True),
        ("localhost/roost-hub@sha256:abc", True, True),
        ("localhost/roost-hub@sha512:" + "a" * 128, True, True),
        ("localhost/roost-hub:0.1.0@sha256:" + "0123456789abcdef" * 4, False, False),
    ],
)
def test_the_digest_rule(image: str, placeholder_ok: bool, refused: bool) -> None:
    assert bool(digest_problems([_deploy(image)], placeholder_ok=placeholder_ok)) == refused


def test_the_placeholder_cannot_run() -> None:
    """Left in by mistake, the placeholder is not a digest: the kubelet refuses the image
    name (InvalidImageName) instead of pulling whatever the tag points to."""
    assert not DIGEST.fullmatch(PLACEHOLDER_DIGEST)
    assert DIGEST.fullmatch("sha256:" + "0" * 64)


def _kustomization_images(path: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = yaml_module().safe_load(path.read_text()).get("images", [])
    return found


def test_every_image_is_set_in_one_place(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Each overlay (and the fleet component) lists every image it renders in `images:`
    with a digest, so the integrator sets digests in one file."""
    for overlay in ("edge", "dev"):
        listed = {
            i["name"]: i
            for i in _kustomization_images(K3S / "overlays" / overlay / "kustomization.yaml")
        }
        listed |= {
            i["name"]: i
            for i in _kustomization_images(K3S / "components" / "fleet" / "kustomization.yaml")
        }
        for entry in listed.values():
            assert entry.get("digest") == PLACEHOLDER_DIGEST, entry
        for rendering in (overlay, f"{overlay}+fleet"):
            if rendering not in rendered:
                continue
            for where, image in images(rendered[rendering]).items():
                name = re.sub(r"(:[^/@]+)?@.*$", "", image)
                assert name in listed, f"{rendering}: {where}: {name} not in images:"


def test_the_check_refuses_the_placeholder_until_digests_are_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edge = str(K3S / "overlays" / "edge")
    assert main([edge]) == 1
    err = capsys.readouterr().err
    assert "still the placeholder" in err
    assert "roost-hub" in err
    assert "eclipse-mosquitto" in err
    # The integrator's edit: every placeholder replaced by a digest (test values here).
    fake = "sha256:" + "ab" * 32
    ready = overlay_copy(tmp_path, "edge", edit={PLACEHOLDER_DIGEST: fake})
    objs = render(find_kubectl(), ready)
    assert all(image.endswith("@" + fake) for image in images(objs).values())
    assert main([str(ready)]) == 0
    # One image left on its tag alone: refused again.
    text = (ready / "kustomization.yaml").read_text()
    (ready / "kustomization.yaml").write_text(text.replace(f"digest: {fake}", "", 1))
    assert main([str(ready)]) == 1
    assert "tag-only" in capsys.readouterr().err


def test_the_digests_are_documented() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert PLACEHOLDER_DIGEST in text
    assert "make k3s-check" in text
