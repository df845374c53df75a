"""Every overlay renders what it promises, validates strictly, and is labelled."""

from __future__ import annotations

import importlib
from typing import Any

from services.kit.auth import Role
from services.kit.certs import server_name
from tests.support.k3s import (
    K8S_VERSION,
    ROOST_ROLES,
    all_objects,
    config_data,
    missing_tool,
    named,
    of_kind,
    pod_labels,
    pod_spec,
)


def test_every_object_validates_strictly(rendered: dict[str, list[dict[str, Any]]]) -> None:
    try:
        kv = importlib.import_module("kubernetes_validate")
    except ModuleNotFoundError:
        missing_tool("kubernetes-validate")
    errors = []
    for overlay, obj in all_objects(rendered):
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except Exception as e:  # report every object, not only the first
            errors.append(f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {e}")
    assert not errors, "\n".join(errors)


def test_overlays_render_what_they_promise(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in rendered.items():
        names = {o["metadata"]["name"] for o in of_kind(objs, "Deployment")}
        expected = {f"roost-{r}" for r in ROOST_ROLES} | {"roost-mosquitto", "roost-prometheus"}
        assert expected <= names, f"{overlay}: missing {expected - names}"
        assert ("roost-supernode" in names) == (overlay == "edge+fleet"), overlay
        tls = "listener 8883" in config_data(objs, "roost-mosquitto-config", "mosquitto.conf")
        assert tls == (overlay == "edge+mqtt-tls"), overlay
        for role in ROOST_ROLES:
            if role != "hub":
                named(objs, "Service", server_name(Role(role)))
            named(objs, "ServiceAccount", f"roost-{role}")
        namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
        assert len(namespaces) == 1, f"{overlay}: objects in {namespaces}"
    assert of_kind(rendered["edge"], "Namespace")[0]["metadata"]["name"] == "roost"


def test_labels(rendered: dict[str, list[dict[str, Any]]]) -> None:
    keys = {f"app.kubernetes.io/{k}" for k in ("name", "instance", "component", "part-of")}
    keys.add("app.kubernetes.io/version")
    for overlay, obj in all_objects(rendered):
        if obj["kind"] in ("Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim"):
            missing = keys - set(obj["metadata"].get("labels", {}))
            assert not missing, f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {missing}"
        if obj["kind"] == "Deployment":
            missing = keys - set(pod_labels(obj))
            assert not missing, f"{overlay}: pods of {obj['metadata']['name']}: {missing}"
            # The version label follows the image tag of Roost's own images.
            image = pod_spec(obj)["containers"][0]["image"]
            if pod_labels(obj)["app.kubernetes.io/part-of"] == "roost" and "/roost-" in image:
                tag = image.split("@")[0].rsplit(":", 1)[1]
                assert pod_labels(obj)["app.kubernetes.io/version"] == tag, (overlay, image)
