"""Registry-backed serving: hot swap under load with zero failed requests, shadow runs,
A/B routing, a candidate that fails to load, and input drift (PSI/KS)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import math
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import REGISTRY

from models.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    parse_manifest,
    shipped_models_dir,
)
from models.reference import reference_histograms
from roost.common.v1 import common_pb2
from roost.inference.v1 import inference_service_pb2 as pb
from roost.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.app import InferenceApp
from services.inference.config import InferenceConfig
from services.inference.drift import EPSILON, DriftMonitor, DriftSettings
from services.inference.monitor import agreement
from services.inference.servicer import POLICY
from services.kit.auth import Role
from services.kit.certs import ensure_certs
from services.kit.client import aio_channel
from services.kit.errors import NotFound
from services.kit.server import RoostServer
from services.modelstore.registry import Registry
from tests.support.onnx_models import linear_model

W_ACTIVE = [1.0, 0.0, -1.0]
W_CANDIDATE = [1.0, 0.0, 1.0]


# --- helpers -----------------------------------------------------------------------------


def rewrite_manifest(model_dir: Path, **changes: object) -> Manifest:
    path = model_dir / MANIFEST_FILE
    manifest = dataclasses.replace(parse_manifest(json.loads(path.read_text())), **changes)  # type: ignore[arg-type]
    path.write_text(manifest.to_json())
    return manifest


def shipped_copy(tmp: Path, version: str, name: str = "occupancy") -> Path:
    """The shipped model directory under another version number."""
    dst = tmp / f"{name}-{version}"
    shutil.copytree(shipped_models_dir() / name, dst)
    rewrite_manifest(dst, version=version)
    return dst


def linear_dir(tmp: Path, weights: list[float], version: str, **changes: object) -> Path:
    """A tiny 'linear' classifier (softmax([0, w.x]): label 'yes' iff w.x > 0)."""
    dst = tmp / f"linear-{version}"
    linear_model(dst, weights)
    rewrite_manifest(dst, version=version, **changes)
    return dst


def linear_probs(weights: list[float], x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    z = x.astype(np.float64) @ np.asarray(weights)
    p_yes = 1.0 / (1.0 + np.exp(-z))
    return np.stack([1.0 - p_yes, p_yes], axis=1)


def tensor(row: npt.ArrayLike) -> common_pb2.Tensor:
    values = np.asarray(row, dtype=np.float32).ravel().tolist()
    return common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, float_values=values)


def batch_request(
    x: npt.NDArray[np.float32], entity_ids: list[str] | None = None, model: str = "linear"
) -> pb.PredictBatchRequest:
    return pb.PredictBatchRequest(
        model_name=model, inputs=[tensor(r) for r in x], entity_ids=entity_ids or []
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def config(tmp: Path, **overrides: object) -> InferenceConfig:
    return InferenceConfig(
        port=0,
        certs_dir=tmp / "certs",
        registry_root=tmp / "registry",
        bootstrap_shipped=False,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
async def app_factory(tmp_path: Path) -> AsyncIterator[list[InferenceApp]]:
    apps: list[InferenceApp] = []
    yield apps
    for app in apps:
        await app.close()


async def started(apps: list[InferenceApp], cfg: InferenceConfig) -> InferenceApp:
    app = InferenceApp(cfg)
    apps.append(app)
    await app.start()
    return app


def two_linear_versions(tmp: Path, stage: str, share: float = 0.0, **changes: object) -> Registry:
    disk = Registry(tmp / "registry")
    disk.add_version(linear_dir(tmp, W_ACTIVE, "1.0.0", **changes), "local")
    disk.activate("linear", "1.0.0")
    disk.add_version(linear_dir(tmp, W_CANDIDATE, "2.0.0", **changes), "local")
    disk.stage("linear", "2.0.0")
    if stage != "staged":
        disk.start_rollout("linear", stage, share)  # type: ignore[arg-type]
    return disk


# --- hot swap under load -----------------------------------------------------------------


async def test_hot_swap_under_load_fails_no_request(
    tmp_path: Path, app_factory: list[InferenceApp]
) -> None:
    ensure_certs(tmp_path / "certs")
    disk = Registry(tmp_path / "registry")
    versions = ["1.0.0", "1.1.0"]
    for v in versions:
        disk.add_version(shipped_copy(tmp_path, v), "shipped")
    disk.activate("occupancy", versions[0])
    cfg = config(tmp_path)
    app = await started(app_factory, cfg)
    server = RoostServer(cfg, Role.INFERENCE, [app.registration()], POLICY)
    port = await server.start()
    swaps_before = metric("roost_inference_swaps_total", model="occupancy")
    baseline = app.registry.get("occupancy").manifest.baseline
    request = pb.PredictRequest(model_name="occupancy", input=tensor(baseline))

    # (sent, answered, version) of every response; failures by status code.
    log: list[tuple[float, float, str]] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def client() -> None:
        channel = aio_channel(
            f"127.0.0.1:{port}",
            certs_dir=tmp_path / "certs",
            role=Role.HUB,
            server_role=Role.INFERENCE,
        )
        stub = pb_grpc.InferenceServiceStub(channel)
        try:
            while not stop.is_set():
                sent = time.perf_counter()
                try:
                    r = await stub.Predict(request, timeout=5)
                except grpc.aio.AioRpcError as e:
                    failures.append(e.code().name)
                    continue
                assert r.prediction.model.version == r.model.version
                log.append((sent, time.perf_counter(), r.model.version))
        finally:
            await channel.close()

    clients = [asyncio.create_task(client()) for _ in range(4)]
    # (activated, first answer from the new version to a request sent after it, version)
    flips: list[tuple[float, float, str]] = []
    try:
        await asyncio.sleep(0.2)
        for i in range(20):
            target = versions[(i + 1) % 2]
            await asyncio.to_thread(disk.activate, "occupancy", target)
            activated = time.perf_counter()
            deadline = activated + 2.0
            seen: float | None = None
            scanned = len(log)
            while seen is None and time.perf_counter() < deadline:
                await asyncio.sleep(0.005)
                end = len(log)
                seen = next(
                    (t for s, t, v in log[scanned:end] if v == target and s > activated), None
                )
                scanned = end
            assert seen is not None, f"flip {i}: no response from {target} within 2 s"
            flips.append((activated, seen, target))
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await server.stop(0)

    latencies = [seen - activated for activated, seen, _ in flips]
    print(
        f"\nhot swap: {len(log)} requests, {len(failures)} failed, 20 flips, swap latency "
        f"max {max(latencies) * 1000:.0f} ms, median {np.median(latencies) * 1000:.0f} ms"
    )
    assert failures == []
    assert max(latencies) < 1.0
    # Between a flip being visible and the next flip, every request sent (and answered)
    # in that interval got the new version: the swap is one atomic switch.
    for (_, seen, target), (next_activated, _, _) in itertools.pairwise(flips):
        between = [v for s, t, v in log if s > seen and t < next_activated]
        assert between
        assert set(between) == {target}
    assert metric("roost_inference_swaps_total", model="occupancy") - swaps_before == 20
    gen = disk.state("occupancy").generation
    assert metric("roost_inference_model_generation", model="occupancy") == gen


# --- shadow --------------------------------------------------------------------------------


async def test_shadow_runs_the_candidate_in_the_background(
    tmp_path: Path, app_factory: list[InferenceApp]
) -> None:
    two_linear_versions(tmp_path, "shadow")
    app = await started(app_factory, config(tmp_path))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    response = await app.servicer.PredictBatch(batch_request(x), None)
    # Callers only ever see the active version.
    assert response.model.version == "1.0.0"
    assert {p.model.version for p in response.predictions} == {"1.0.0"}
    got = np.array([p.values for p in response.predictions])
    assert np.allclose(got, linear_probs(W_ACTIVE, x), atol=1e-5)
    single = await app.servicer.Predict(
        pb.PredictRequest(model_name="linear", input=tensor(x[0]), entity_id="e1"), None
    )
    assert single.prediction.model.version == "1.0.0"
    await app.monitor.drain()

    status = await app.servicer.GetModelStatus(pb.GetModelStatusRequest(model_name="linear"), None)
    assert status.stage == pb.ROLLOUT_STAGE_SHADOW
    assert (status.active.model.version, status.active.predictions) == ("1.0.0", 201)
    c = status.candidate
    assert (c.model.version, c.loaded, c.predictions, c.errors, c.compared) == (
        "2.0.0",
        True,
        201,
        0,
        201,
    )
    xs = np.vstack([x, x[:1]])
    expected = np.mean((xs @ W_ACTIVE > 0) == (xs @ W_CANDIDATE > 0))
    assert 0.2 < expected < 0.8  # the two versions really disagree on some inputs
    assert c.agreement_rate == pytest.approx(expected)
    assert 0 < status.active.latency_p50_seconds <= status.active.latency_p99_seconds < 1
    assert 0 < c.latency_p50_seconds <= c.latency_p99_seconds < 1
    assert status.window_seconds == 600


def test_regressors_agree_within_the_tolerance(tmp_path: Path) -> None:
    m = dataclasses.replace(linear_model(tmp_path, [1.0]).manifest, task_kind="regression")
    a = np.array([[20.0, 21.0], [20.0, 21.0], [20.0, 21.0]], dtype=np.float32)
    c = np.array([[20.4, 20.6], [20.6, 21.0], [20.0, 22.0]], dtype=np.float32)
    assert agreement(m, a, c, 0.5).tolist() == [True, False, False]


# --- A/B -----------------------------------------------------------------------------------


def expected_candidate(entity_id: str, share: float) -> bool:
    digest = hashlib.sha256(f"linear|2.0.0|{entity_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < share


async def test_ab_routes_a_stable_share_of_entities(
    tmp_path: Path, app_factory: list[InferenceApp]
) -> None:
    share = 0.3
    two_linear_versions(tmp_path, "ab", share)
    app = await started(app_factory, config(tmp_path))
    rng = np.random.default_rng(2)
    n = 2000
    x = rng.normal(size=(n, 3)).astype(np.float32)
    ids = [f"entity-{i}" for i in range(n)]
    response = await app.servicer.PredictBatch(batch_request(x, ids), None)
    assert response.model.version == "1.0.0"  # the response-level model stays active
    routed = np.array([p.model.version == "2.0.0" for p in response.predictions])
    # Binomial(2000, 0.3): mean 600, sd 20.5; 5 sd either side.
    sd = math.sqrt(n * share * (1 - share))
    assert abs(routed.sum() - n * share) <= 5 * sd
    assert routed.tolist() == [expected_candidate(e, share) for e in ids]
    # Mixed batch reassembled in order: each row's values come from its own model.
    got = np.array([p.values for p in response.predictions])
    want = np.where(routed[:, None], linear_probs(W_CANDIDATE, x), linear_probs(W_ACTIVE, x))
    assert np.allclose(got, want, atol=1e-5)
    for p in response.predictions:
        assert p.model.sha256
        assert p.label in ("no", "yes")

    # Stable per entity: another order, another batch split, single Predict.
    order = rng.permutation(n)[:300]
    again = await app.servicer.PredictBatch(batch_request(x[order], [ids[i] for i in order]), None)
    assert [p.model.version == "2.0.0" for p in again.predictions] == routed[order].tolist()
    for i in order[:20]:
        one = await app.servicer.Predict(
            pb.PredictRequest(model_name="linear", input=tensor(x[i]), entity_id=ids[i]), None
        )
        assert (one.prediction.model.version == "2.0.0") == routed[i]
        assert one.model.version == "1.0.0"
    # No entity id: always the active version.
    anonymous = await app.servicer.PredictBatch(batch_request(x[:100]), None)
    assert {p.model.version for p in anonymous.predictions} == {"1.0.0"}

    status = await app.servicer.GetModelStatus(pb.GetModelStatusRequest(model_name="linear"), None)
    assert (status.stage, status.share) == (pb.ROLLOUT_STAGE_AB, pytest.approx(share))
    k = int(routed.sum()) + int(routed[order].sum()) + int(routed[order[:20]].sum())
    assert status.candidate.predictions == k
    assert status.active.predictions == n + 300 + 20 + 100 - k


# --- load failures -------------------------------------------------------------------------


async def test_a_version_that_fails_to_load_leaves_the_active_serving(
    tmp_path: Path, app_factory: list[InferenceApp]
) -> None:
    disk = two_linear_versions(tmp_path, "staged")
    # Damage the installed candidate after its verification at install time.
    with (disk.version_dir("linear", "2.0.0") / "linear.onnx").open("ab") as f:
        f.write(b"\x00")
    app = await started(app_factory, config(tmp_path))
    x = np.ones((4, 3), dtype=np.float32)
    failed = metric("roost_inference_model_load_failures_total", model="linear", role="candidate")
    disk.start_rollout("linear", "shadow")
    assert app.watcher is not None
    await app.watcher.refresh(force=True)
    assert (
        metric("roost_inference_model_load_failures_total", model="linear", role="candidate")
        == failed + 1
    )
    response = await app.servicer.PredictBatch(batch_request(x), None)
    assert {p.model.version for p in response.predictions} == {"1.0.0"}
    status = await app.servicer.GetModelStatus(pb.GetModelStatusRequest(model_name="linear"), None)
    assert (status.candidate.model.version, status.candidate.loaded) == ("2.0.0", False)
    assert status.generation == disk.state("linear").generation

    # Activating the broken version directly: the old one keeps serving.
    failed = metric("roost_inference_model_load_failures_total", model="linear", role="active")
    disk.activate("linear", "2.0.0")
    await app.watcher.refresh(force=True)
    assert (
        metric("roost_inference_model_load_failures_total", model="linear", role="active")
        == failed + 1
    )
    response = await app.servicer.PredictBatch(batch_request(x), None)
    assert {p.model.version for p in response.predictions} == {"1.0.0"}
    with pytest.raises(NotFound):
        await app.servicer.PredictBatch(
            pb.PredictBatchRequest(model_name="linear", version="2.0.0", inputs=[tensor(x[0])]),
            None,
        )


# --- drift ---------------------------------------------------------------------------------


def direct_psi_ks(
    edges: tuple[float, ...], probs: tuple[float, ...], values: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """PSI and KS straight from the definitions, one feature at a time."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(probs))
    p_live = counts / counts.sum()
    p_ref = np.asarray(probs)
    q_live = (p_live + EPSILON) / (1 + EPSILON * len(probs))
    q_ref = (p_ref + EPSILON) / (1 + EPSILON * len(probs))
    psi = float(np.sum((q_live - q_ref) * np.log(q_live / q_ref)))
    ks = float(np.max(np.abs(np.cumsum(p_live) - np.cumsum(p_ref))[:-1]))
    return psi, ks


def test_psi_and_ks_match_a_direct_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train = np.stack(
        [rng.normal(size=4000), rng.exponential(size=4000), rng.integers(0, 2, 4000)], axis=1
    )
    reference = reference_histograms(train, ["f0", "f1", "f2"])
    assert len(reference["f0"].probs) == 10
    assert reference["f2"].edges == (0.0, 1.0)  # a binary feature: <= 0, (0, 1], > 1
    for ref in reference.values():
        assert sum(ref.probs) == pytest.approx(1.0, abs=1e-5)
    manifest = dataclasses.replace(linear_model(tmp_path, W_ACTIVE).manifest, reference=reference)
    now = [0.0]
    drift = DriftMonitor(manifest, DriftSettings(min_samples=100), clock=lambda: now[0])
    live = np.stack(
        [rng.normal(1.0, 1.2, 700), rng.exponential(size=700), rng.integers(0, 2, 700)], axis=1
    )
    for chunk in np.array_split(live, 7):
        drift.observe(chunk.astype(np.float32))
    stats = {s.feature: s for s in drift.stats()}
    for j, name in enumerate(["f0", "f1", "f2"]):
        values = live[:, j].astype(np.float32).astype(np.float64)
        psi, ks = direct_psi_ks(reference[name].edges, reference[name].probs, values)
        assert stats[name].psi == pytest.approx(psi, rel=1e-6, abs=1e-9)
        assert stats[name].ks == pytest.approx(ks, rel=1e-6, abs=1e-9)
        assert stats[name].samples == 700
    assert stats["f0"].alert
    assert stats["f0"].psi > 0.25
    assert not stats["f1"].alert
    assert stats["f1"].psi < 0.1
    # The window: a day later the counts have rolled out.
    now[0] += 25 * 3600
    assert all(s.samples == 0 and s.psi == 0 and not s.alert for s in drift.stats())


async def test_drift_alert_flips_when_live_inputs_shift(
    tmp_path: Path, app_factory: list[InferenceApp]
) -> None:
    rng = np.random.default_rng(4)
    reference = reference_histograms(rng.normal(size=(5000, 3)), ["f0", "f1", "f2"])
    two_linear_versions(tmp_path, "shadow", reference=reference)
    app = await started(app_factory, config(tmp_path, min_samples=500))
    status_request = pb.GetModelStatusRequest(model_name="linear")

    await app.servicer.PredictBatch(
        batch_request(rng.normal(size=(400, 3)).astype(np.float32)), None
    )
    await app.monitor.drain()
    status = await app.servicer.GetModelStatus(status_request, None)
    assert status.drift_monitored
    assert not status.drift_alert
    assert [d.feature for d in status.drift] == ["f0", "f1", "f2"]
    assert {d.samples for d in status.drift} == {400}  # below min_samples: no alert anyway

    await app.servicer.PredictBatch(
        batch_request(rng.normal(size=(400, 3)).astype(np.float32)), None
    )
    await app.monitor.drain()
    status = await app.servicer.GetModelStatus(status_request, None)
    assert not status.drift_alert
    assert all(d.psi < 0.1 and d.ks < 0.1 for d in status.drift)
    assert metric("roost_inference_drift_alert", model="linear") == 0.0

    # The household changes: f0 shifts by 2 sd (with a sentinel row to look for later).
    shifted = rng.normal(size=(1200, 3)).astype(np.float32)
    shifted[:, 0] += 2.0
    shifted[0] = [4242.4242, 1717.1717, 9191.9191]
    await app.servicer.PredictBatch(batch_request(shifted), None)
    await app.monitor.drain()
    status = await app.servicer.GetModelStatus(status_request, None)
    by_feature = {d.feature: d for d in status.drift}
    assert status.drift_alert
    assert by_feature["f0"].alert
    assert by_feature["f0"].psi > 0.25
    assert not by_feature["f1"].alert
    assert by_feature["f0"].samples == 2000
    assert metric("roost_inference_drift_alert", model="linear") == 1.0
    assert metric("roost_inference_feature_psi", model="linear", feature="f0") == pytest.approx(
        by_feature["f0"].psi
    )
    assert metric("roost_inference_feature_ks", model="linear", feature="f0") == pytest.approx(
        by_feature["f0"].ks
    )

    # No metric of this service carries an input value in a label.
    for family in REGISTRY.collect():
        if not family.name.startswith("roost_inference"):
            continue
        for sample in family.samples:
            assert set(sample.labels) <= {"model", "feature", "version", "role", "le"}
            for value in sample.labels.values():
                assert not any(s in value for s in ("4242", "1717", "9191")), sample


async def test_model_status_over_grpc_is_read_only_for_auditors(
    tmp_path: Path, app_factory: list[InferenceApp]
) -> None:
    ensure_certs(tmp_path / "certs")
    two_linear_versions(tmp_path, "staged")
    cfg = config(tmp_path)
    app = await started(app_factory, cfg)
    server = RoostServer(cfg, Role.INFERENCE, [app.registration()], POLICY)
    port = await server.start()
    try:
        for role, allowed in (
            (Role.AUDITOR, True),
            (Role.UPDATE, True),
            (Role.PERSONALIZATION, False),
        ):
            channel = aio_channel(
                f"127.0.0.1:{port}",
                certs_dir=tmp_path / "certs",
                role=role,
                server_role=Role.INFERENCE,
            )
            stub = pb_grpc.InferenceServiceStub(channel)
            try:
                if allowed:
                    s = await stub.GetModelStatus(
                        pb.GetModelStatusRequest(model_name="linear"), timeout=5
                    )
                    assert s.stage == pb.ROLLOUT_STAGE_STAGED
                    assert (s.candidate.model.version, s.candidate.loaded) == ("2.0.0", False)
                    assert not s.drift_monitored
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await stub.GetModelStatus(
                            pb.GetModelStatusRequest(model_name="linear"), timeout=5
                        )
                    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            finally:
                await channel.close()
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"nope": {"edges": [0.0], "probs": [0.5, 0.5]}}, "not an input feature"),
        ({"f0": {"edges": [1.0, 1.0], "probs": [0.2, 0.3, 0.5]}}, "strictly increasing"),
        ({"f0": {"edges": [0.0], "probs": [1.0]}}, "1 probs for 2 bins"),
        ({"f0": {"edges": [0.0], "probs": [0.5, 0.6]}}, "sum to"),
        ({"f0": {"probs": [0.5, 0.5]}}, "missing field 'edges'"),
    ],
)
def test_malformed_references_are_refused(
    tmp_path: Path, reference: dict[str, object], message: str
) -> None:
    linear_model(tmp_path, W_ACTIVE)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    raw["reference"] = reference
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw)
