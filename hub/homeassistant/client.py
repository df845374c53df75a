"""Roost's Home Assistant API client (homeassistant-api 6.1): act, read registries, import.

* :class:`HaClient` wraps the library's sync REST ``Client`` (service calls, entity
  histories); the area, device and entity registries, which REST does not serve, come
  from the websocket API (:mod:`hub.homeassistant.ws_registries`). Calls are blocking;
  the hub runs them in a worker thread.
* :class:`ActionRunner` executes allow-listed actions **after** their decision was
  acknowledged by the audit log: a bounded queue, a bounded number of attempts per call,
  every outcome counted (``roost_hub_ha_actions_total{outcome}``). A failed call never
  stops the hub; Home Assistant attributes the state change to the service call's
  context, so its logbook shows it. Before calling, it reads the entity's current state:
  an entity already in the state the service leads to (``turn_off`` and ``off``) is left
  alone (outcome ``unneeded``). Each call made is remembered per entity
  (:class:`~hub.action_memory.ActionMemory`).
* :func:`build_examples` resamples Home Assistant history onto a model's feature windows
  (``models.features.FeatureWindow``, the code training and serving use) and labels each
  window from a label entity, for ``AddExamples`` with ``LABEL_SOURCE_IMPORT``.

Household values never appear in logs or metric labels: only entity ids (configuration)
and outcomes do.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, cast

from google.protobuf.timestamp_pb2 import Timestamp
from homeassistant_api import Client

from hub.action_memory import ActionMemory
from hub.homeassistant.ws_registries import read_registries
from hub.payloads import InvalidReading, parse_statestream
from hub.policy import HA_ACTIONS, ActionRule
from models.features import FeatureSpec, FeatureWindow
from roost.common.v1 import common_pb2
from roost.personalization.v1 import personalization_service_pb2 as pers_pb

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 255
# The state an entity is in once a service ran; an entity already there is left alone.
RESULTING_STATE = {
    "turn_off": "off",
    "turn_on": "on",
    "close_cover": "closed",
    "open_cover": "open",
}


class HaUnavailable(RuntimeError):
    """Home Assistant is not configured, not reachable, or refused the call."""


def read_token(path: Path | None) -> str:
    if path is None:
        raise HaUnavailable("ha_token_file is not set")
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise HaUnavailable(f"cannot read the Home Assistant token file {path}: {e}") from e
    if not token:
        raise HaUnavailable(f"the Home Assistant token file {path} is empty")
    return token


def _epoch(text: Any) -> float | None:
    """HA's ISO 8601 time (with its zone) as epoch seconds; None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


@dataclass(frozen=True)
class _EntityRef:
    """What ``get_entity_histories`` reads from each entity: its id."""

    entity_id: str


class HaClient:
    """Blocking calls to one Home Assistant (``url`` like ``http://homeassistant:8123``)."""

    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        if not url:
            raise HaUnavailable("ha_url is not set")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def _rest(self) -> Client:
        kwargs = cast("Mapping[str, str]", {"timeout": self._timeout})
        return Client(f"{self.url}/api", self._token, global_request_kwargs=kwargs)

    def call_service(self, domain: str, service: str, entity_id: str) -> None:
        try:
            self._rest().trigger_service(domain, service, entity_id=entity_id)
        except Exception as e:
            raise HaUnavailable(f"{domain}.{service} failed: {type(e).__name__}") from e

    def call(self, domain: str, service: str, data: Mapping[str, str]) -> None:
        """A service call with its data (e.g. ``persistent_notification.create``)."""
        try:
            self._rest().trigger_service(domain, service, **data)
        except Exception as e:
            raise HaUnavailable(f"{domain}.{service} failed: {type(e).__name__}") from e

    def state(self, entity_id: str) -> str:
        """The entity's current state (``on``, ``off``, ``unavailable`` ...)."""
        try:
            return str(self._rest().get_state(entity_id=entity_id).state)
        except Exception as e:
            raise HaUnavailable(f"cannot read the state of {entity_id}: {type(e).__name__}") from e

    def states(self, entity_ids: Iterable[str]) -> list[tuple[str, str, float]]:
        """``[(entity_id, state, epoch seconds), ...]`` of those of ``entity_ids`` HA has
        (one ``GET /api/states``). The time is when HA last confirmed the state (the latest
        of ``last_changed``, ``last_updated`` and ``last_reported`` it sent; a state with
        none that parses is left out, never given the time of reading)."""
        wanted = set(entity_ids)
        try:
            states = self._rest().request("states")
        except Exception as e:
            raise HaUnavailable(f"cannot read the states: {type(e).__name__}") from e
        if not isinstance(states, list):
            raise HaUnavailable("cannot read the states: not a list")
        out: list[tuple[str, str, float]] = []
        for s in states:
            if not isinstance(s, dict) or s.get("entity_id") not in wanted:
                continue
            times = [_epoch(s.get(k)) for k in ("last_changed", "last_updated", "last_reported")]
            known = [t for t in times if t is not None]
            if known and isinstance(s.get("state"), str):
                out.append((str(s["entity_id"]), s["state"], max(known)))
        return out

    def registries(self) -> dict[str, list[Any]]:
        """The area, device and entity registries and the current states (websocket)."""
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        try:
            return read_registries(ws_url, self._token, timeout=self._timeout)
        except Exception as e:
            raise HaUnavailable(f"cannot read the registries: {type(e).__name__}: {e}") from e

    def histories(
        self, entity_ids: Sequence[str], start: datetime, end: datetime
    ) -> dict[str, list[tuple[float, str]]]:
        """``{entity_id: [(epoch seconds, state), ...]}`` (explicit entities only)."""
        entities = cast("Any", tuple(_EntityRef(e) for e in entity_ids))
        out: dict[str, list[tuple[float, str]]] = {e: [] for e in entity_ids}
        try:
            for history in self._rest().get_entity_histories(
                entities=entities, start_timestamp=start, end_timestamp=end
            ):
                for state in history.states:
                    changed = state.last_changed or state.last_updated
                    if state.entity_id in out and changed is not None:
                        out[state.entity_id].append((changed.timestamp(), state.state))
        except Exception as e:
            raise HaUnavailable(f"cannot read the history: {type(e).__name__}") from e
        for series in out.values():
            series.sort()
        return out


@dataclass(frozen=True)
class ActionCall:
    rule: ActionRule
    decision_id: str


class ActionRunner:
    """Runs allow-listed actions in order; bounded queue and attempts; counts outcomes."""

    def __init__(
        self,
        client: HaClient | None,
        *,
        attempts: int = 3,
        timeout: float = 5.0,
        max_queue: int = 100,
        backoff: float = 0.5,
        memory: ActionMemory | None = None,
    ) -> None:
        self._client = client
        self._memory = memory or ActionMemory()
        self._attempts = max(1, attempts)
        self._timeout = timeout
        self._backoff = backoff
        self._queue: deque[ActionCall] = deque(maxlen=max_queue)
        self._wakeup = asyncio.Event()
        self.done: list[tuple[str, str]] = []  # (decision_id, outcome), latest 100

    def submit(self, rule: ActionRule, decision_id: str) -> None:
        if self._queue.maxlen is not None and len(self._queue) >= self._queue.maxlen:
            dropped = self._queue.popleft()
            HA_ACTIONS.labels("dropped").inc()
            self._record(dropped.decision_id, "dropped")
        self._queue.append(ActionCall(rule, decision_id))
        self._wakeup.set()

    def _record(self, decision_id: str, outcome: str) -> None:
        self.done.append((decision_id, outcome))
        del self.done[:-100]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self._queue:
                self._wakeup.clear()
                waiter = asyncio.create_task(self._wakeup.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            call = self._queue.popleft()
            outcome = await self._execute(call, stop)
            HA_ACTIONS.labels(outcome).inc()
            self._record(call.decision_id, outcome)

    async def _execute(self, call: ActionCall, stop: asyncio.Event) -> str:
        rule = call.rule
        if self._client is None:
            log.warning("%s allowed but ha_url/ha_token_file are not configured", rule.action)
            return "failed"
        if await self._already_there(call):
            log.debug("%s not called: the entity is already in that state", rule.action)
            return "unneeded"
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(
                        self._client.call_service, rule.domain, rule.service, rule.target
                    ),
                    self._timeout,
                )
                # DEBUG, not INFO: the time of an action says when a room was judged empty;
                # the audit log and HA's logbook are where actions are on record.
                log.debug("called %s (decision %s)", rule.action, call.decision_id)
                self._memory.remember_action(rule.target, rule.action, call.decision_id)
                return "called"
            except (HaUnavailable, TimeoutError) as e:
                if attempt == self._attempts or stop.is_set():
                    log.warning(
                        "%s failed after %d attempts (decision %s): %s",
                        rule.action,
                        attempt,
                        call.decision_id,
                        type(e).__name__,
                    )
                    return "failed"
                HA_ACTIONS.labels("retried").inc()
                await asyncio.sleep(delay)
                delay *= 2
        return "failed"

    async def _already_there(self, call: ActionCall) -> bool:
        """Whether HA says the target is already in the state the service leads to (a
        state that cannot be read: not known to be, so the call is made)."""
        wanted = RESULTING_STATE.get(call.rule.service)
        if wanted is None or self._client is None:
            return False
        try:
            current = await asyncio.wait_for(
                asyncio.to_thread(self._client.state, call.rule.target), self._timeout
            )
        except (HaUnavailable, TimeoutError):
            return False
        return current == wanted


# ------------------------------------------------------------------ history import

DEFAULT_LABEL_MAPS: dict[str, dict[str, str]] = {
    "occupancy": {
        "on": "occupied",
        "home": "occupied",
        "detected": "occupied",
        "off": "vacant",
        "not_home": "vacant",
        "clear": "vacant",
    },
}


def parse_label_map(text: str) -> dict[str, str]:
    """``"on=occupied,off=vacant"`` -> {"on": "occupied", "off": "vacant"}."""
    out: dict[str, str] = {}
    for part in text.split(","):
        state, sep, label = part.partition("=")
        if not sep or not state.strip() or not label.strip():
            raise ValueError(f"label map entry '{part}' must look like 'on=occupied'")
        out[state.strip().lower()] = label.strip()
    return out


def _numeric(state: str) -> float | None:
    try:
        return parse_statestream(state.encode()[:MAX_STATE_BYTES], max_bytes=MAX_STATE_BYTES).value
    except InvalidReading:
        return None


def build_examples(  # noqa: PLR0917 - one call site, all needed
    spec: FeatureSpec,
    series: Mapping[str, Sequence[tuple[float, str]]],
    labels: Sequence[tuple[float, str]],
    label_map: Mapping[str, str],
    start: float,
    end: float,
    tz: tzinfo = UTC,
    step_seconds: float | None = None,
) -> list[pers_pb.Example]:
    """Labelled model inputs from Home Assistant history.

    ``series`` maps a sensor kind of ``spec`` to that sensor's ``(ts, state)`` history,
    ``labels`` is the label entity's history. Every ``step_seconds`` (default: the spec's
    step) the latest value of each kind is fed to a :class:`FeatureWindow` (forward fill,
    as a periodically reporting sensor would) and, when the window is ready and the label
    entity's state at that time maps to a label, one example is taken.

    The windows sit on a grid of multiples of the step (epoch time), not on ``start``:
    importing an overlapping range again yields the same windows, which the example store
    then skips as duplicates (an example's id covers its input, label and time).
    """
    step = step_seconds or spec.step_seconds
    if not step > 0:
        raise ValueError("step_seconds must be > 0")
    events: list[tuple[float, str, float]] = []
    for kind, history in series.items():
        for ts, state in history:
            value = _numeric(state)
            if value is not None:
                events.append((ts, kind, value))
    events.sort()
    label_events = sorted((ts, label_map.get(s.lower())) for ts, s in labels)
    window = FeatureWindow(spec, tz)
    latest: dict[str, float] = {}
    examples: list[pers_pb.Example] = []
    i = j = 0
    label: str | None = None
    order = sorted(spec.sensor_kinds, key=lambda k: k == spec.step_kind)
    k = math.ceil(start / step)
    while (t := k * step) <= end:
        k += 1
        while i < len(events) and events[i][0] <= t:
            latest[events[i][1]] = events[i][2]
            i += 1
        while j < len(label_events) and label_events[j][0] <= t:
            label = label_events[j][1]
            j += 1
        ready = False
        for kind in order:  # the step kind last: its reading takes the snapshot
            if kind in latest:
                ready = window.update(kind, latest[kind], t)
        if ready and label is not None:
            x = window.tensor(t)
            observed = Timestamp()
            observed.FromDatetime(datetime.fromtimestamp(t, UTC))
            examples.append(
                pers_pb.Example(
                    input=common_pb2.Tensor(
                        dtype=common_pb2.DATA_TYPE_FLOAT32,
                        shape=list(x.shape),
                        float_values=x.ravel().tolist(),
                    ),
                    label=label,
                    observed_at=observed,
                )
            )
    return examples


def chunks(items: Sequence[pers_pb.Example], size: int = 500) -> Iterable[list[pers_pb.Example]]:
    for k in range(0, len(items), size):
        yield list(items[k : k + size])
