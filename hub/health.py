"""Whether the hub is deciding, per model, and if not, why.

The decision pipeline reports what its calls meet: an outage of the inference or the
audit service (a call that could not reach it), a refusal of one model by inference
(e.g. ``NOT_FOUND``), a success, and how many readings wait for each model. From that,
each model is in one :class:`ModelState` since some time, with a plain-language
detail: "audit unavailable for 12 s, 2,400 readings queued".

Shown three ways, none with a household value (model names, states, counts and times
only): the metrics ``roost_hub_model_state{model,state}`` (1 for the current state),
``roost_hub_model_state_since_seconds{model}`` and ``roost_hub_model_backlog{model}``
(what ``roost status`` reads), and a retained JSON document on
``roost/<hub_id>/health`` (docs/topics.md), republished on every change and, while a
model is not deciding or the last document showed readings queued, every
``health_interval_seconds`` (so the backlog it shows drains to 0 after an outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prometheus_client import Gauge


class ModelState(StrEnum):
    DECIDING = "deciding"
    INFERENCE_UNAVAILABLE = "inference_unavailable"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    MODEL_REFUSED = "model_refused"


class Peer(StrEnum):
    INFERENCE = "inference"
    AUDIT = "audit"


MODEL_STATE = Gauge(
    "roost_hub_model_state",
    "1 for each model's current state (deciding, inference_unavailable, audit_unavailable, "
    "model_refused), 0 for the others.",
    ["model", "state"],
)
MODEL_STATE_SINCE = Gauge(
    "roost_hub_model_state_since_seconds",
    "When each model entered its current state (Unix time).",
    ["model"],
)
MODEL_BACKLOG = Gauge(
    "roost_hub_model_backlog", "Readings waiting for each model's decision.", ["model"]
)


def health_topic(hub_id: str) -> str:
    return f"roost/{hub_id}/health"


def describe(state: ModelState, seconds: float, queued: int, code: str = "") -> str:
    """The plain-language status of one model, e.g. ``audit unavailable for 12 s, 2,400
    readings queued``."""
    queue = f"{queued:,} readings queued"
    if state is ModelState.DECIDING:
        return f"deciding, {queue}" if queued else "deciding"
    what = {
        ModelState.INFERENCE_UNAVAILABLE: "inference unavailable",
        ModelState.AUDIT_UNAVAILABLE: "audit unavailable",
        ModelState.MODEL_REFUSED: f"inference refuses the model{f' ({code})' if code else ''}",
    }[state]
    return f"{what} for {seconds:,.0f} s, {queue}"


@dataclass(frozen=True)
class ModelHealth:
    model: str
    state: ModelState
    since: float  # Unix time the state began
    queued: int
    code: str = ""  # the refusal's status code (MODEL_REFUSED)

    @property
    def deciding(self) -> bool:
        return self.state is ModelState.DECIDING

    def detail(self, now: float) -> str:
        return describe(self.state, max(0.0, now - self.since), self.queued, self.code)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class DecisionHealth:
    """The state of each model, updated by the pipeline; metrics follow every change.

    ``changed`` is set whenever a model's state changes (the publisher waits on it)."""

    def __init__(self, models: Iterable[str] = (), clock: Callable[[], float] = time.time):
        self._clock = clock
        self._down: dict[Peer, float] = {}  # peer -> since when its calls fail
        self._refused: dict[str, tuple[float, str]] = {}  # model -> (since, code)
        self._queued: dict[str, int] = {}
        self._backlog_gauges: dict[str, Any] = {}  # model -> its MODEL_BACKLOG child
        self._current: dict[str, tuple[ModelState, float]] = {}  # model -> (state, since)
        self.changed = asyncio.Event()
        self.track(models)

    def track(self, models: Iterable[str]) -> None:
        """Report on ``models`` from now on (deciding, until told otherwise)."""
        for model in models:
            if model not in self._current:
                self._queued[model] = 0
                MODEL_BACKLOG.labels(model).set(0)
                self._update(model)

    def peer_failed(self, peer: Peer) -> None:
        """A call could not reach ``peer`` (down, restarting, too slow)."""
        if peer not in self._down:
            self._down[peer] = self._clock()
            self._update_all()

    def peer_ok(self, peer: Peer) -> None:
        """``peer`` answered a call."""
        if self._down.pop(peer, None) is not None:
            self._update_all()

    def model_refused(self, model: str, code: str) -> None:
        """Inference refuses ``model`` itself (not one input): e.g. ``NOT_FOUND``."""
        if model not in self._refused:
            self._refused[model] = (self._clock(), code)
            self._update(model)

    def model_ok(self, model: str) -> None:
        """``model`` predicted."""
        if self._refused.pop(model, None) is not None:
            self._update(model)

    def queued(self, model: str, delta: int) -> None:
        """``delta`` more (or fewer) readings wait for ``model``'s decision."""
        if model not in self._current:
            self.track([model])
        n = self._queued[model] = max(0, self._queued[model] + delta)
        gauge = self._backlog_gauges.get(model)
        if gauge is None:
            gauge = self._backlog_gauges[model] = MODEL_BACKLOG.labels(model)
        gauge.set(n)

    def _state_of(self, model: str) -> tuple[ModelState, float, str]:
        # Inference comes first on the decision path: while it is down, nothing
        # reaches the audit log, whatever the audit service's state.
        if Peer.INFERENCE in self._down:
            return ModelState.INFERENCE_UNAVAILABLE, self._down[Peer.INFERENCE], ""
        refused = self._refused.get(model)
        if refused is not None:
            return ModelState.MODEL_REFUSED, refused[0], refused[1]
        if Peer.AUDIT in self._down:
            return ModelState.AUDIT_UNAVAILABLE, self._down[Peer.AUDIT], ""
        return ModelState.DECIDING, self._clock(), ""

    def _update_all(self) -> None:
        for model in list(self._current):
            self._update(model)

    def _update(self, model: str) -> None:
        state, since, _ = self._state_of(model)
        previous = self._current.get(model)
        if previous is not None and previous[0] is state:
            return
        self._current[model] = (state, since)
        for s in ModelState:
            MODEL_STATE.labels(model, s.value).set(1 if s is state else 0)
        MODEL_STATE_SINCE.labels(model).set(since)
        self.changed.set()

    def models(self) -> list[ModelHealth]:
        out = []
        for model, (state, since) in sorted(self._current.items()):
            code = self._refused[model][1] if state is ModelState.MODEL_REFUSED else ""
            out.append(ModelHealth(model, state, since, self._queued[model], code))
        return out

    @property
    def deciding(self) -> bool:
        return all(m.deciding for m in self.models())

    def document(self, hub_id: str) -> dict[str, Any]:
        """The retained JSON (docs/topics.md): model names, states, counts and times."""
        now = self._clock()
        models = self.models()
        return {
            "hub_id": hub_id,
            "deciding": all(m.deciding for m in models),
            "updated_at": _iso(now),
            "models": {
                m.model: {
                    "state": m.state.value,
                    "deciding": m.deciding,
                    "since": _iso(m.since),
                    "for_seconds": round(max(0.0, now - m.since)),
                    "queued": m.queued,
                    "detail": m.detail(now),
                }
                for m in models
            },
        }

    async def publish_loop(
        self,
        hub_id: str,
        publish: Callable[[str, bytes], Awaitable[None]],
        interval: float,
        stop: asyncio.Event,
    ) -> None:
        """Publish the document on every change, and every ``interval`` seconds while a
        model is not deciding (its time and queue grow) or the document just published
        shows readings queued (catching up), until ``stop``. ``publish`` may skip while
        the broker is away: set ``changed`` on reconnect."""
        topic = health_topic(hub_id)
        while not stop.is_set():
            self.changed.clear()
            doc = self.document(hub_id)
            await publish(topic, json.dumps(doc).encode())
            settled = doc["deciding"] and not any(m["queued"] for m in doc["models"].values())
            waits = [asyncio.ensure_future(self.changed.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(
                    waits,
                    timeout=None if settled else interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for w in waits:
                    w.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await w
