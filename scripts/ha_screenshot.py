"""Screenshots of the "Roost hub" device and the Kitchen area in a REAL Home Assistant UI
(docs/img/ha_dashboard.png, docs/img/ha_room_kitchen.png).

    python scripts/ha_screenshot.py [--out docs/img/ha_dashboard.png] [--keep]

1. starts Home Assistant 2025.4.4 with its own mosquitto through the integration-test
   harness (``tests/support/home_assistant.py``: HA's venv, onboarding, MQTT entry,
   areas), with template sensors (temperature, humidity, illuminance, CO2) in the Kitchen
   and the Living Room, then marks the onboarding steps the harness skips as done and
   restarts it (otherwise the frontend shows the onboarding wizard);
2. starts a Roost stack on HA's broker (audit, inference, update, personalization, hub
   with ``ha_mapping = "auto"``) and sets the sensors so the occupancy model decides for
   both rooms (the kitchen light is switched off by an allow-listed action);
3. logs in like the frontend does (login flow -> auth code for the client id
   ``<ha url>/``), starts headless Chromium with a DevTools port and, through a tiny CDP
   client (run under HA's Python, which has aiohttp; Roost's .venv has no websocket
   client), opens ``/config/devices/device/<id>?auth_callback=1&code=..&state=..``: the
   frontend exchanges the code for tokens itself, as after a normal login;
4. waits until the device page shows Roost's entities (texts in its shadow DOM), then
   saves a PNG. Exit code 1 if the page never got ready (the PNG is saved anyway).

Needs Chromium (``apt-get install -y --no-install-recommends chromium``) and mosquitto.
Everything runs under a temporary directory, removed at the end (``--keep`` keeps it,
with HA's and the services' logs). Takes ~25 s with HA's venv installed.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.stack import Stack, free_port  # noqa: E402
from tests.support.ha_entities import KINDS, room_sensors, set_room  # noqa: E402
from tests.support.ha_onboarding import OWNER  # noqa: E402
from tests.support.ha_roost import start_roost  # noqa: E402
from tests.support.home_assistant import HomeAssistant, start_home_assistant  # noqa: E402
from tests.support.waiting import WaitTimeout, wait_until  # noqa: E402

HUB_ID = "home"
ROOMS = {"kitchen": "Kitchen", "living_room": "Living Room"}
READINGS = {
    "kitchen": {"temperature": 20.4, "humidity": 25.0, "illuminance": 0.0, "carbon_dioxide": 440},
    "living_room": {
        "temperature": 22.6,
        "humidity": 27.5,
        "illuminance": 520.0,
        "carbon_dioxide": 950,
    },
}
ONBOARDING_STEPS = ("user", "core_config", "analytics", "integration")
ACTIONS = "occupancy.kitchen:vacant=input_boolean.turn_off:input_boolean.kitchen_light"
# True once the page shows every text of WANT (texts inside HA's shadow DOM).
READY_JS = r"""
(() => {
  const want = WANT;
  const texts = [];
  const walk = (n) => {
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.children || []) walk(c);
    if (n.nodeType === 1 && n.children.length === 0 && n.textContent) texts.push(n.textContent);
  };
  walk(document.documentElement);
  const all = texts.join("\n");
  return want.every((w) => all.includes(w)) && !all.includes("Loading data");
})()
"""
CDP_SCRIPT = r"""
import asyncio, base64, json, sys
import aiohttp

async def main() -> None:
    req = json.load(sys.stdin)
    base = f"http://127.0.0.1:{req['port']}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"{base}/json/list") as r:
                    pages = [t for t in await r.json() if t["type"] == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            sys.exit("chromium's DevTools endpoint did not answer")
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def call(method, **params):
                i = next(ids)
                await ws.send_json({"id": i, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == i:
                        if "error" in msg:
                            sys.exit(f"{method}: {msg['error']}")
                        return msg["result"]

            await call("Page.enable")
            await call("Emulation.setDeviceMetricsOverride", width=req["width"],
                       height=req["height"], deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", url=req["url"])
            ready = False
            loop = asyncio.get_running_loop()
            deadline = loop.time() + req["timeout"]
            while loop.time() < deadline:
                await asyncio.sleep(1.0)
                result = await call("Runtime.evaluate", expression=req["ready_js"],
                                    returnByValue=True)
                if result.get("result", {}).get("value") is True:
                    ready = True
                    break
            await asyncio.sleep(req["settle"])  # icons, state colours
            shot = await call("Page.captureScreenshot", format="png")
            location = await call("Runtime.evaluate", expression="location.href",
                                  returnByValue=True)
    json.dump({"png": shot["data"], "ready": ready,
               "url": location["result"].get("value")}, sys.stdout)

asyncio.run(main())
"""


def ha_options() -> dict[str, Any]:
    numbers, sensors, areas = room_sensors(ROOMS, KINDS, "roostshot")
    areas["input_boolean.kitchen_light"] = "Kitchen"
    return {
        "extra_config": {
            "input_number": numbers,
            "input_boolean": {"kitchen_light": {"name": "Kitchen light", "initial": True}},
            "template": [{"sensor": sensors}],
        },
        "areas": areas,
    }


def finish_onboarding(ha: HomeAssistant) -> None:
    """Mark the onboarding steps the harness skips (core_config would add a weather entry
    that calls the internet) as done, so the frontend opens pages instead of the
    onboarding wizard; HA reads its store at start, so it is restarted."""
    ha.stop()
    store = ha.config_dir / ".storage" / "onboarding"
    doc = json.loads(store.read_text())
    doc["data"]["done"] = sorted({*doc["data"]["done"], *ONBOARDING_STEPS})
    store.write_text(json.dumps(doc, indent=2))
    # Not ha.restart(): it waits for /api/onboarding, which an onboarded HA no longer serves.
    ha.boot(180)


def auth_url(ha: HomeAssistant, path: str) -> str:
    """``path`` with a fresh auth code: the frontend's own login redirect, done by hand."""
    client_id = f"{ha.url}/"
    flow = ha.rest(
        "POST",
        "/auth/login_flow",
        {"client_id": client_id, "handler": ["homeassistant", None], "redirect_uri": client_id},
        auth=False,
    )
    done = ha.rest(
        "POST",
        f"/auth/login_flow/{flow['flow_id']}",
        {"client_id": client_id, "username": OWNER["username"], "password": OWNER["password"]},
        auth=False,
    )
    if done.get("type") != "create_entry":
        raise SystemExit(f"login failed: {done}")
    state = base64.b64encode(json.dumps({"hassUrl": ha.url, "clientId": client_id}).encode())
    return f"{ha.url}{path}?auth_callback=1&code={done['result']}&state={state.decode()}"


def screenshot(
    ha: HomeAssistant,
    url: str,
    out: Path,
    work: Path,
    size: tuple[int, int],
    *,
    want: list[str],
) -> bool:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is missing: apt-get install -y --no-install-recommends chromium")
    assert ha.venv is not None
    port = free_port()
    browser = subprocess.Popen(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={work / 'chromium'}",
            f"--remote-debugging-port={port}",
            f"--window-size={size[0]},{size[1]}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "chromium.log").open("wb"),
        start_new_session=True,
    )
    try:
        request = {
            "port": port,
            "url": url,
            "width": size[0],
            "height": size[1],
            "timeout": 60,
            "settle": 3,
            "ready_js": READY_JS.replace("WANT", json.dumps(want)),
        }
        proc = subprocess.run(
            [str(ha.venv / "bin" / "python"), "-c", CDP_SCRIPT],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
    if proc.returncode != 0:
        raise SystemExit(f"CDP client failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(result["png"]))
    print(f"page: {result['url']}")
    return bool(result["ready"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "ha_dashboard.png")
    parser.add_argument(
        "--room-out", type=Path, default=ROOT / "docs" / "img" / "ha_room_kitchen.png"
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="roost-ha-shot-"))
    t0 = time.monotonic()
    broker, ha = start_home_assistant(work / "ha", **ha_options())
    stack: Stack | None = None
    try:
        finish_onboarding(ha)
        print(f"Home Assistant {ha.url} up in {time.monotonic() - t0:.0f} s")
        stack = start_roost(
            ha, work / "roost", hub_id=HUB_ID, actions=ACTIONS, personalization_timeout=90
        )
        for room, values in READINGS.items():
            set_room(ha, room, values)
        for room in ROOMS:
            wait_until(
                lambda r=room: (
                    (ha.state(f"binary_sensor.roost_hub_occupancy_{r}") or {})
                    .get("attributes", {})
                    .get("why")
                ),
                60,
                f"the {room} decision in HA",
            )
        wait_until(
            lambda: (
                (ha.state("sensor.roost_hub_privacy_budget_spent") or {}).get("state")
                not in (None, "unavailable", "unknown")
            ),
            60,
            "the privacy budget",
        )
        devices = [
            d for d in ha.device_registry() if ["mqtt", f"roost_{HUB_ID}"] in d["identifiers"]
        ]
        if len(devices) != 1:
            raise SystemExit(f"expected one Roost hub device, found {len(devices)}")
        url = auth_url(ha, f"/config/devices/device/{devices[0]['id']}")
        size = (args.width, args.height)
        ready = screenshot(
            ha, url, args.out, work, size, want=["Privacy budget spent", "Learning mode"]
        )
        print(
            f"{'saved' if ready else 'saved (page NOT ready: check it)'} {args.out} "
            f"in {time.monotonic() - t0:.0f} s"
        )
        # The room: Roost's kitchen prediction on the Kitchen area page (suggested_area).
        room_url = auth_url(ha, "/config/areas/area/kitchen")
        room_ready = screenshot(
            ha, room_url, args.room_out, work, (args.width, 1200), want=["Roost Kitchen"]
        )
        print(f"{'saved' if room_ready else 'saved (page NOT ready: check it)'} {args.room_out}")
        return 0 if ready and room_ready else 1
    except WaitTimeout as e:
        raise SystemExit(str(e)) from None
    finally:
        if stack is not None:
            stack.stop()
        ha.stop()
        broker.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
