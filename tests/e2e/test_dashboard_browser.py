"""The ops dashboard in a real headless Chromium, against ingest, scorer and API on the real stack.

Simulated users' history goes in through ingest; the scorer fills Redis; the
page, given the development key, shows the at-risk table, then an alert
published on the alerts topic appears in its live feed. Screenshots land in
the test's directory and in ``test-output/`` at the repo root for people.

Chromium is Debian's ``chromium`` (``apt-get install -y chromium``; CI installs
it). It is driven through the DevTools protocol over ``--remote-debugging-pipe``
(NUL-separated JSON on fds 3 and 4): no port to pick, no WebSocket library, no
browser download.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.common.kafka import make_producer
from services.common.schemas import validate
from services.demo_users import post
from services.launcher import Services, wait_http
from services.sim.generator import DAY, history, make_users
from tests.conftest import Isolated

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


class Chromium:
    """A headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path) -> None:
        to_child, self._write_fd = os.pipe()
        self._read_fd, from_child = os.pipe()

        def fds() -> None:  # the pipe protocol reads fd 3 and writes fd 4
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(profile / "chromium.log").open("wb"),
            pass_fds=(3, 4),
            preexec_fn=fds,  # runs in the child, before exec
        )
        os.close(to_child)
        os.close(from_child)
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page.enable", "Runtime.enable"):
            self.call(domain, session=self.session)

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._read_fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                with self._cv:
                    for raw in messages:
                        msg = json.loads(raw)
                        if "id" in msg:
                            self._replies[msg["id"]] = msg
                        else:
                            self.events.append(msg)
                    self._cv.notify_all()

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._write_fd, json.dumps(msg).encode() + b"\0")
        with self._cv:
            if not self._cv.wait_for(lambda: msg_id in self._replies, timeout=30):
                raise TimeoutError(f"Chromium did not answer {method}")
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.call(method, params, session=self.session)

    def js(self, expression: str) -> Any:
        reply = self.page(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float = 20, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is still loading: not there yet
                value = None
            if value:
                return value
            time.sleep(0.2)
        text = self.js("document.body ? document.body.innerText.slice(0, 2000) : ''")
        raise AssertionError(f"timed out waiting for {what or expression}; the page shows:\n{text}")

    def type_into(self, selector: str, text: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.page("Input.insertText", {"text": text})

    def screenshot(self, path: Path, *, width: int = 1440) -> None:
        height = int(self.js("document.documentElement.scrollHeight"))
        self.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        time.sleep(0.3)
        shot = self.page("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(b64decode(shot["data"]))
        self.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors the page produced."""
        with self._cv:
            found = [
                json.dumps(e["params"])[:500]
                for e in self.events
                if e.get("method") == "Runtime.exceptionThrown"
                or (
                    e.get("method") == "Runtime.consoleAPICalled"
                    and e["params"].get("type") == "error"
                )
            ]
        return found

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def chromium() -> Iterator[Chromium]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must run 'apt-get install -y chromium'")
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's browser with apt-get install -y chromium"
        )
    with tempfile.TemporaryDirectory(prefix="churnwatch-chromium-") as profile:
        browser = Chromium(Path(profile))
        try:
            browser.page(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            )
            yield browser
        finally:
            browser.close()


def seed_users(ingest: str, services: Services, *, users: int) -> int:
    """45 days of simulated history for ``users`` users, through ingest."""
    start = time.time() - 45 * DAY
    events = [
        e for u in make_users(users, seed=7) for e in history(u, start=start, days=45, seed=7)
    ]
    with httpx.Client(timeout=30) as client:
        return sum(
            post(client, f"{ingest}/v1/events", events[i : i + 2000])
            for i in range(0, len(events), 2000)
        )


def wait_scored(api: str, services: Services, *, users: int) -> list[dict[str, Any]]:
    """The at-risk list once every user is scored and it stopped changing."""
    deadline = time.monotonic() + 120
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        services.check()
        reply = httpx.get(
            f"{api}/v1/at-risk?limit=200", headers={"Authorization": "Bearer dev-key"}, timeout=5
        )
        before, items = items, reply.json().get("items", []) if reply.status_code == 200 else []
        if len(items) == users and items == before:
            return items
        time.sleep(1)
    raise AssertionError(f"{len(items)} of {users} users scored after 120 s, or still changing")


def new_alert(user_id: str, run: str) -> dict[str, Any]:
    alert = {
        "schema_version": 1,
        "alert_id": f"browser-test-{run}",
        "user_id": user_id,
        "risk": 0.93,
        "score": 93,
        "band": "critical",
        "previous_band": "high",
        "trigger": "band_up",
        "segment": {"stage": "at-risk", "tier": "high"},
        "reasons": [
            {
                "feature": "payment_failures_30d",
                "label": "failed payments in the last 30 days",
                "contribution": 1.7,
                "value": 2.0,
            }
        ],
        "model_version": "browser-test@1",
        "horizon_days": 14,
        "timezone": "Europe/Berlin",
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    assert validate("churn-alert", alert) == []
    return alert


def keep(shot: Path, name: str) -> None:
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    shutil.copyfile(shot, out / name)


def test_dashboard_shows_users_and_live_alerts(isolated: Isolated, chromium: Chromium) -> None:
    services = Services(
        isolated.settings,
        isolated.env,
        logs=isolated.out / "logs",
        names=("ingest", "scorer", "api"),
    )
    api = isolated.url("api")
    try:
        services.start()
        wait_http(f"{isolated.url('ingest')}/healthz", 60, services)
        wait_http(f"{api}/healthz", 60, services)
        assert seed_users(isolated.url("ingest"), services, users=60) > 1000
        scored = wait_scored(api, services, users=60)

        b = chromium
        b.page("Page.navigate", {"url": f"{api}/dashboard"})
        b.wait_for("!document.getElementById('login').hidden", what="the key form")

        b.type_into("#key-input", "not-a-key")
        b.js("document.getElementById('login-submit').click()")
        refused = b.wait_for(
            "document.getElementById('login-error').hidden ? '' : "
            "document.getElementById('login-error').textContent",
            what="the 401 message",
        )
        assert "401" in refused and "refused" in refused

        b.js("document.getElementById('key-input').value = ''")
        b.type_into("#key-input", "dev-key")
        b.js("document.getElementById('login-submit').click()")
        rows = b.wait_for(
            "[...document.querySelectorAll('#atrisk-body tr[data-user]')].map(r => r.dataset.user)",
            what="the at-risk table",
        )
        assert rows[0] == scored[0]["user_id"]
        assert len(rows) == 15  # the default page size; more users are scored
        b.wait_for("!document.getElementById('next').disabled", what="a next page")
        b.wait_for(
            "document.getElementById('feed-status').textContent === 'live'",
            what="the live feed to connect",
        )
        b.wait_for("!!document.querySelector('#chart-active svg')", what="the activity chart")

        alert = new_alert(scored[0]["user_id"], isolated.run)
        producer = make_producer(isolated.settings)
        try:
            producer.send(
                isolated.settings.topic_alerts,
                key=alert["user_id"].encode(),
                value=orjson.dumps(alert),
            ).get(timeout=10)
        finally:
            producer.close()
        shown = b.wait_for(
            f"document.querySelector('#feed li[data-alert=\"{alert['alert_id']}\"]')?.innerText",
            what="the published alert in the live feed",
        )
        assert alert["user_id"] in shown and "93" in shown
        assert "failed payments" in shown

        b.js("document.getElementById('next').click()")
        b.wait_for(
            "document.getElementById('atrisk-info').textContent.startsWith('Page 2')",
            what="page 2 of the at-risk table",
        )
        second = b.js(
            "[...document.querySelectorAll('#atrisk-body tr[data-user]')].map(r => r.dataset.user)"
        )
        assert second and not set(second) & set(rows)
        b.js("document.getElementById('prev').click()")
        b.wait_for(
            "document.getElementById('atrisk-info').textContent.startsWith('Page 1')",
            what="page 1 again",
        )
        time.sleep(1.5)  # let the new feed entry's highlight fade for the picture
        overview = isolated.out / "dashboard.png"
        b.screenshot(overview)
        keep(overview, "dashboard.png")

        b.js(f"document.querySelector('#atrisk-body tr[data-user=\"{rows[0]}\"]').click()")
        b.wait_for(
            "!!document.querySelector('#user-body .reason') && "
            "!!document.querySelector('#user-body .chart svg circle')",
            what="the user page with reasons and the risk history chart",
        )
        page = b.js("document.getElementById('user-body').innerText")
        assert rows[0] in page and "Why this risk" in page and "Behaviour features" in page
        assert "Days since last activity" in page  # reasons and features in plain words
        user_shot = isolated.out / "dashboard-user.png"
        b.screenshot(user_shot)
        keep(user_shot, "dashboard-user.png")

        assert b.errors() == []
    finally:
        chromium.close()  # the live stream ends with the page, so the API stops at once
        services.stop()
