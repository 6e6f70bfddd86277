"""Keys on every route, no development key in production, no contact details in logs, erase.

- Every route of the ingest app and the risk API (enumerated from
  ``app.routes``) answers 401 without a key, except the health and metrics
  routes and the dashboard's public page, labels and static files (the alert
  stream is a /v1 route: it needs a key too, which it may also take as
  ``?key=``).
- With ``CHURNWATCH_ENV=production`` the processes refuse ``dev-key``.
- An end-to-end run (ingest, scorer, notifier, risk API; contacts with e-mail
  addresses and phone numbers put through the API, an SMS provider that fails
  for half the users, events carrying personal data in their properties and
  invalid ones with an address where a field should be) leaves no e-mail
  address and no phone number in any process's log.
- ``DELETE /v1/users/{id}`` with an admin key leaves nothing of the user: no
  key matching ``*{uid}*`` and the uid in no other key under the prefix.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kafka import KafkaProducer
from starlette.routing import Mount

from services.common.auth import ApiKeys, MemoryKeyStore, RedisKeyStore, create_key
from services.demo_users import noon_zone
from services.ingest.app import create_app
from services.ingest.config import IngestSettings
from services.launcher import Services, wait_http
from services.notifier.adapters.redis_directory import erased_key
from services.notifier.mailcatcher import MailCatcher
from services.scorer.api import build_api
from services.scorer.config import ApiSettings
from tests.chaos.conftest import free_port, make_stream, wait_caught_up
from tests.conftest import Isolated, left_after_erase

pytestmark = pytest.mark.chaos

OPEN = {"/healthz", "/readyz", "/metrics"}
# FastAPI's interactive docs answer without a key: development mode only.
DOCS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
# The dashboard's page has its own rules: the HTML, its static files and the feature
# labels carry no user data and are public; the page asks for a key before any call.
DASHBOARD_PUBLIC = {"/dashboard", "/dashboard/labels", "/dashboard/static"}


class NoPublisher:
    def publish(self, records: Any) -> list[BaseException | None]:
        raise AssertionError("an unauthenticated request reached Kafka")

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route, included routers and mounts too."""

    def walk(items: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in items:
            inner = getattr(route, "original_router", None)  # FastAPI >= 0.16x: lazy include
            if inner is not None:
                extra = getattr(getattr(route, "include_context", None), "prefix", "")
                yield from walk(inner.routes, prefix + extra)
            elif isinstance(route, Mount):
                yield "GET", prefix + route.path
            else:
                for method in sorted(getattr(route, "methods", None) or {"GET"}):
                    yield method, prefix + route.path

    return list(walk(app.routes, ""))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "u-1", path)


@pytest.mark.parametrize("env", ["development", "production"])
def test_every_route_needs_a_key(env: str) -> None:
    keys = ApiKeys(MemoryKeyStore(), allow_dev_key=env == "development")
    apps = {
        "ingest": create_app(IngestSettings(env=env), NoPublisher(), keys=keys),  # type: ignore[arg-type]
        "api": build_api(ApiSettings(env=env), keys=keys),
    }
    problems, checked = [], 0
    for name, app in apps.items():
        client = TestClient(app)
        found = routes(app)
        if env == "production":
            assert not DOCS & {p for _, p in found}, f"{name}: docs without a key in production"
        for method, path in found:
            if path in OPEN or path in DOCS or (name == "api" and path in DASHBOARD_PUBLIC):
                continue
            reply = client.request(method, concrete(path), json={})
            checked += 1
            if reply.status_code != 401:
                problems.append(f"{name} {method} {path}: {reply.status_code}")
            elif "error" not in reply.json():
                problems.append(f"{name} {method} {path}: 401 without an error message")
            reply = client.request(
                method, concrete(path), json={}, headers={"Authorization": "Bearer nope"}
            )
            if reply.status_code != 401:
                problems.append(f"{name} {method} {path} with an unknown key: {reply.status_code}")
    assert checked >= 12, f"only {checked} routes found: the enumeration is broken"
    assert not problems, "\n".join(problems)


def test_production_refuses_the_development_key(chaos: Isolated) -> None:
    env = chaos.env | {"CHURNWATCH_ENV": "production"}
    services = Services(chaos.settings, env, names=("ingest", "api"), logs=chaos.out / "logs")
    services.start()
    try:
        wait_http(chaos.url("ingest") + "/healthz", 60, services)
        wait_http(chaos.url("api") + "/healthz", 60, services)
        dev = {"Authorization": "Bearer dev-key"}
        event = {
            "event_id": "p-1",
            "user_id": "u-1",
            "type": "login",
            "occurred_at": "2026-11-20T10:00:00Z",
        }
        reply = httpx.post(chaos.url("ingest") + "/v1/events", json=event, headers=dev)
        assert reply.status_code == 401, reply.text
        reply = httpx.get(chaos.url("api") + "/v1/users/u-1", headers=dev)
        assert reply.status_code == 401, reply.text
        store = RedisKeyStore(chaos.settings.redis_url, key_prefix=chaos.settings.key_prefix)
        key = create_key(store, scopes=["ingest"], name="chaos")
        reply = httpx.post(
            chaos.url("ingest") + "/v1/events",
            json=event,
            headers={"Authorization": f"Bearer {key}"},
        )
        assert reply.status_code == 200, reply.text  # a real key still works
    finally:
        services.stop()
    logs = "".join(p.read_text() for p in (chaos.out / "logs").glob("*.log"))
    assert "development mode" not in logs


class SmsProvider(BaseHTTPRequestHandler):
    """A Twilio-style endpoint that fails for every other phone number."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        SmsProvider.received.append(body)
        failing = body.count(b"0") % 2 == 0
        self.send_response(500 if failing else 201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "queued"}' if not failing else b'{"error": "boom"}')

    def log_message(self, *args: Any) -> None:
        pass


def personal(i: int) -> tuple[str, str]:
    return f"person.{i:03d}@mail-example.org", f"+491511234{i:04d}"


def test_logs_hold_no_contact_details_and_erase_leaves_nothing(chaos: Isolated) -> None:
    now = time.time()
    events = make_stream(now, 40, seed=3, days=30, prefix="sec")
    uids = sorted({e["user_id"] for e in events})
    for i, e in enumerate(events):  # personal data where it does not belong, but allowed
        if i % 50 == 0:
            e["properties"]["note"] = "reach me at {} or {}".format(*personal(i % 40))
    invalid = [
        {**events[0], "event_id": "bad-1", "type": personal(1)[0]},
        {**events[0], "event_id": "bad-2", "occurred_at": personal(2)[1]},
        {**events[0], "event_id": "bad-3", "user_id": personal(3)[0] * 10},
    ]
    sms = HTTPServer(("127.0.0.1", free_port()), SmsProvider)
    threading.Thread(target=sms.serve_forever, daemon=True).start()
    catcher = MailCatcher("127.0.0.1", chaos.ports["smtp"]).start()
    env = chaos.env | {
        "CHURNWATCH_SMS_URL": f"http://127.0.0.1:{sms.server_port}/Messages.json",
        "CHURNWATCH_SMS_ACCOUNT": "AC-chaos",
        "CHURNWATCH_SMS_TOKEN": "sms-secret-token",
        "CHURNWATCH_NOTIFIER_ATTEMPTS": "2",
        "CHURNWATCH_NOTIFIER_BACKOFF_S": "0.1",
        "CHURNWATCH_LOG_LEVEL": "debug",
    }
    logs = chaos.out / "logs"
    names = ("ingest", "scorer", "notifier", "api")
    services = Services(chaos.settings, env, names=names, logs=logs)
    dev = {"Authorization": "Bearer dev-key"}
    try:
        services.start()
        wait_http(chaos.url("ingest") + "/healthz", 60, services)
        wait_http(chaos.url("api") + "/healthz", 60, services)
        with httpx.Client(timeout=30, headers=dev) as client:
            for i, uid in enumerate(uids):
                email, phone = personal(i)
                reply = client.put(
                    f"{chaos.url('api')}/v1/users/{uid}/contact",
                    json={"email": email, "phone": phone, "timezone": noon_zone(time.time())},
                )
                assert reply.status_code == 200, reply.text
                preferred = "sms" if i % 2 else "email"
                reply = client.put(
                    f"{chaos.url('api')}/v1/users/{uid}/consent",
                    json={"channels": {"email": True, "sms": True}, "preferred": preferred},
                )
                assert reply.status_code == 200, reply.text
            # A contact that fails validation must not be echoed back or logged either.
            reply = client.put(
                f"{chaos.url('api')}/v1/users/{uids[0]}/contact",
                json={"email": "not-an-address " + personal(7)[0], "phone": "0" + personal(7)[1]},
            )
            assert reply.status_code == 422 and personal(7)[0] not in reply.text
            body = b"\n".join(orjson.dumps(e) for e in [*events, *invalid])
            reply = client.post(
                chaos.url("ingest") + "/v1/events",
                content=body,
                headers={"Content-Type": "application/x-ndjson"},
            )
            assert reply.status_code == 207, reply.text
            assert len(reply.json()["rejected"]) == len(invalid)
        raw = KafkaProducer(bootstrap_servers=chaos.settings.kafka_bootstrap)
        raw.send(chaos.settings.topic_events, b'{"email": "' + personal(9)[0].encode(), key=b"x")
        raw.flush()
        raw.close()
        wait_caught_up(
            chaos.settings,
            chaos.env["CHURNWATCH_SCORER_GROUP"],
            chaos.settings.topic_events,
            timeout=120,
            check=services.check,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and catcher.inbox.received < len(uids) // 3:
            services.check()
            time.sleep(0.5)
        time.sleep(3)
        wait_caught_up(
            chaos.settings,
            chaos.env["CHURNWATCH_NOTIFIER_GROUP"],
            chaos.settings.topic_alerts,
            timeout=120,
            check=services.check,
        )
        assert catcher.inbox.received, "no e-mail was sent: the notifier's paths were not run"
        erased = erase_one(chaos, uids)
    finally:
        services.stop()
        catcher.stop()
        sms.shutdown()

    leaks = find_personal_data(logs, [personal(i) for i in range(len(uids) + 10)])
    assert not leaks, "personal data in the logs:\n" + "\n".join(leaks[:10])
    print(
        f"{len(events)} events, {catcher.inbox.received} e-mails, "
        f"{len(SmsProvider.received)} SMS attempts; erased {erased}"
    )


def erase_one(chaos: Isolated, uids: list[str]) -> str:
    """Erase the user with the most stored kinds of data and check that nothing is left."""
    prefix = chaos.settings.key_prefix
    r = redis.Redis.from_url(chaos.settings.redis_url)
    kinds = {uid: {k.decode() for k in r.scan_iter(match=f"{prefix}:{{{uid}}}:*")} for uid in uids}
    uid = max(uids, key=lambda u: len(kinds[u]))
    assert len(kinds[uid]) >= 5, f"too little stored about any user to test erase: {kinds[uid]}"
    admin = create_key(
        RedisKeyStore(chaos.settings.redis_url, key_prefix=prefix), scopes=["admin"], name="dpo"
    )
    reader = create_key(
        RedisKeyStore(chaos.settings.redis_url, key_prefix=prefix), scopes=["read"], name="ops"
    )
    url = f"{chaos.url('api')}/v1/users/{uid}"
    reply = httpx.delete(url, headers={"Authorization": f"Bearer {reader}"})
    assert reply.status_code == 403, "a read key could erase a user"
    reply = httpx.delete(url, headers={"Authorization": f"Bearer {admin}"})
    assert reply.status_code == 200, reply.text
    left = left_after_erase(r, prefix, uid, match=f"*{uid}*")
    assert not left, f"keys of {uid} left after erase: {left}"
    holders = []
    needle = uid.encode()
    for key in r.scan_iter(match=f"{prefix}:*"):
        if key == erased_key(prefix, uid).encode():  # the erase's guard: a time, for 7 days
            continue
        kind = r.type(key).decode()
        if kind == "zset":
            values = r.zrange(key, 0, -1)
        elif kind == "hash":
            values = [b"%s=%s" % kv for kv in r.hgetall(key).items()]
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        elif kind == "set":
            values = list(r.smembers(key))
        else:
            values = [r.get(key) or b""]
        if any(needle in v for v in values):
            holders.append(key.decode())
    r.close()
    assert not holders, f"{uid} still appears in {holders}"
    reply = httpx.get(url, headers={"Authorization": f"Bearer {admin}"})
    assert reply.status_code == 404
    return f"{uid} ({len(kinds[uid])} kinds of key)"


def find_personal_data(logs: Path, people: list[tuple[str, str]]) -> list[str]:
    email = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
    found = []
    for path in sorted(logs.glob("*.log")):
        text = path.read_text(errors="replace")
        for line in text.splitlines():
            if email.search(line):
                found.append(f"{path.name}: {line[:300]}")
                continue
            for address, phone in people:
                if address in line or phone in line or phone[1:] in line:
                    found.append(f"{path.name}: {line[:300]}")
                    break
    assert text is not None
    return found
