"""Every channel against a real server on loopback: SMTP (aiosmtpd) and HTTP providers.

The HTTP providers are small ``http.server`` servers in a thread that answer from
a script (500s, a slow answer, 429 with Retry-After, success) and record each
request with its arrival time, so retries and backoff are checked from the
server's side. Time gaps are only compared with the wait the provider asked for
(a logic check of the backoff), never with a performance budget.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from email.message import Message as Email
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from aiosmtpd.controller import Controller

from services.common.errors import DeliveryFailed
from services.notifier.adapters.memory_directory import MemoryDirectory
from services.notifier.channels.base import (
    Channel,
    Message,
    RetryPolicy,
    deliver_with_retries,
)
from services.notifier.channels.http_channels import PushChannel, SmsChannel, WebhookChannel
from services.notifier.channels.smtp_channel import SmtpChannel
from services.notifier.core.playbook_book import PlaybookBook
from services.notifier.core.templates import Brand, Renderer
from services.notifier.mailcatcher import Inbox, MailCatcher
from services.notifier.service import Notifier
from tests.conftest import free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")
FAST = RetryPolicy(attempts=4, base_s=0.05, cap_s=2.0)
SECRET = "s3cret"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def message(**kw: Any) -> Message:
    base: dict[str, Any] = {
        "to": "u1@example.test",
        "subject": "We miss you",
        "text": "Come back: code SAVE15\n",
        "html": "<p>Come back: code <b>SAVE15</b></p>",
        "idempotency_key": "act-123",
        "metadata": {"alert_id": "a1", "offer": "SAVE15"},
    }
    return Message(**(base | kw))


# --- HTTP providers -----------------------------------------------------------------------


@dataclass
class Hit:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Provider:
    """Answers from ``script`` (one step per request, then 200); records every request."""

    script: list[tuple[int, dict[str, Any], float]] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def next_step(self, hit: Hit) -> tuple[int, dict[str, Any], float]:
        with self.lock:
            self.hits.append(hit)
            return self.script.pop(0) if self.script else (200, {}, 0.0)

    def gaps(self) -> list[float]:
        return [b.at - a.at for a, b in zip(self.hits, self.hits[1:], strict=False)]


def step(status: int = 200, *, sleep: float = 0.0, **headers: Any) -> tuple[int, dict, float]:
    """One scripted answer; a header value may be a function called when the request comes."""
    return (status, {k.replace("_", "-"): v for k, v in headers.items()}, sleep)


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hit = Hit(
                time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
            status, headers, sleep = state.next_step(hit)
            headers = {k: v() if callable(v) else v for k, v in headers.items()}
            time.sleep(sleep)  # a slow provider: longer than the channel's timeout
            payload = orjson.dumps({"sid": f"m{len(state.hits)}"})
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up waiting

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1/send"
    yield state
    server.shutdown()
    server.server_close()


async def send_with(
    make: Callable[[httpx.AsyncClient], Channel],
    msg: Message,
    *,
    policy: RetryPolicy = FAST,
    retries: list[DeliveryFailed] | None = None,
) -> int:
    async with httpx.AsyncClient() as client:
        channel = make(client)
        return await deliver_with_retries(
            lambda: channel.send(msg),
            policy=policy,
            on_retry=lambda n, exc: retries.append(exc) if retries is not None else None,
        )


def sms(provider: Provider, **kw: Any) -> Callable[[httpx.AsyncClient], Channel]:
    return lambda c: SmsChannel(
        url=provider.url, client=c, sender="Acme", account="AC1", token="tok", **kw
    )


def push(provider: Provider, **kw: Any) -> Callable[[httpx.AsyncClient], Channel]:
    return lambda c: PushChannel(url=provider.url, client=c, token="fcm-token", **kw)


def webhook(provider: Provider, **kw: Any) -> Callable[[httpx.AsyncClient], Channel]:
    return lambda c: WebhookChannel(url=provider.url, client=c, secret=SECRET, **kw)


def test_sms_is_a_form_post_with_basic_auth_and_idempotency_key(provider: Provider) -> None:
    attempts = run(send_with(sms(provider), message(to="+15550100")))

    [hit] = provider.hits
    assert attempts == 1
    assert hit.headers["idempotency-key"] == "act-123"
    assert hit.headers["content-type"] == "application/x-www-form-urlencoded"
    assert hit.headers["authorization"] == "Basic " + base64.b64encode(b"AC1:tok").decode()
    form = parse_qs(hit.body.decode())
    assert form == {"To": ["+15550100"], "From": ["Acme"], "Body": ["Come back: code SAVE15\n"]}


def test_push_is_an_fcm_style_json_post(provider: Provider) -> None:
    run(send_with(push(provider), message(to="device-token-1")))

    [hit] = provider.hits
    assert hit.headers["idempotency-key"] == "act-123"
    assert hit.headers["authorization"] == "Bearer fcm-token"
    body = orjson.loads(hit.body)
    assert body["message"]["token"] == "device-token-1"
    assert body["message"]["notification"] == {
        "title": "We miss you",
        "body": "Come back: code SAVE15\n",
    }
    assert body["message"]["data"] == {"alert_id": "a1", "offer": "SAVE15"}


def test_webhook_body_is_signed_with_the_shared_secret(provider: Provider) -> None:
    run(send_with(webhook(provider), message(to="retention")))

    [hit] = provider.hits
    expected = hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["x-churnwatch-signature"] == f"sha256={expected}"
    assert hit.headers["idempotency-key"] == "act-123"
    assert orjson.loads(hit.body)["queue"] == "retention"
    tampered = hmac.new(SECRET.encode(), hit.body + b" ", hashlib.sha256).hexdigest()
    assert hit.headers["x-churnwatch-signature"] != f"sha256={tampered}"


@pytest.mark.parametrize("make", [sms, push, webhook], ids=["sms", "push", "webhook"])
def test_500s_are_retried_until_the_provider_accepts(
    provider: Provider, make: Callable[..., Any]
) -> None:
    provider.script = [step(500), step(502)]
    retries: list[DeliveryFailed] = []

    attempts = run(send_with(make(provider), message(), retries=retries))

    assert attempts == 3
    assert len(provider.hits) == 3
    assert [str(e).split(": ", 1)[1] for e in retries] == [
        "provider answered 500",
        "provider answered 502",
    ]
    # The retry is the same message: a provider can drop it by its key.
    assert {h.headers["idempotency-key"] for h in provider.hits} == {"act-123"}
    assert len({h.body for h in provider.hits}) == 1


def test_a_client_error_is_final_and_not_retried(provider: Provider) -> None:
    provider.script = [step(400)]

    with pytest.raises(DeliveryFailed) as caught:
        run(send_with(sms(provider), message()))

    assert caught.value.retryable is False
    assert len(provider.hits) == 1


def test_a_provider_slower_than_the_timeout_is_retried(provider: Provider) -> None:
    provider.script = [step(200, sleep=1.0)]
    retries: list[DeliveryFailed] = []

    attempts = run(send_with(push(provider, timeout_s=0.2), message(), retries=retries))

    assert attempts == 2
    assert len(provider.hits) == 2
    assert "timed out" in str(retries[0])


def test_429_retry_after_is_waited_for_before_the_next_attempt(provider: Provider) -> None:
    provider.script = [step(429, Retry_After="1")]

    attempts = run(send_with(webhook(provider), message()))

    assert attempts == 2
    [gap] = provider.gaps()
    # FAST's own backoff for the first retry is at most 0.05 s: only Retry-After explains this.
    assert gap >= 1.0 - 0.02


def test_503_retry_after_as_an_http_date_is_honoured(provider: Provider) -> None:
    # Whole seconds: a date three seconds ahead is at least two seconds after the request
    # (more than the 1 s a date used to be mistaken for).
    provider.script = [step(503, Retry_After=lambda: formatdate(time.time() + 3, usegmt=True))]
    policy = RetryPolicy(attempts=2, base_s=0.05, cap_s=5.0)

    attempts = run(send_with(sms(provider), message(), policy=policy))

    assert attempts == 2
    [gap] = provider.gaps()
    assert gap >= 2.0 - 0.02


def test_every_attempt_failing_ends_in_the_dead_letter_path(provider: Provider) -> None:
    provider.script = [step(503)] * 10
    policy = RetryPolicy(attempts=3, base_s=0.05, cap_s=0.2)

    with pytest.raises(DeliveryFailed) as caught:
        run(send_with(sms(provider), message(), policy=policy))

    assert caught.value.retryable is True
    assert len(provider.hits) == 3


def test_notifier_records_a_dead_lettered_hand_off_as_failed(provider: Provider) -> None:
    from services.notifier import metrics

    provider.script = [step(500)] * 10
    book = PlaybookBook.model_validate(
        {
            "defaults": {"control_share": 0.0},
            "playbooks": [
                {"name": "handoff", "actions": [{"channel": "webhook", "template": "cs_handoff"}]}
            ],
        }
    )
    alert = {
        "alert_id": "a-dead",
        "user_id": "u-dead",
        "band": "critical",
        "score": 90,
        "risk": 0.9,
        "segment": {"stage": "active", "tier": "high"},
        "reasons": [],
        "horizon_days": 14,
        "model_version": "m",
    }
    directory = MemoryDirectory()
    dead_before = metrics.DEAD_LETTERS.labels("webhook")._value.get()

    async def scenario() -> list[Any]:
        async with httpx.AsyncClient() as client:
            notifier = Notifier(
                book=book,
                directory=directory,
                channels={"webhook": webhook(provider)(client)},
                renderer=Renderer(),
                brand=Brand(name="Acme", url="https://acme.example"),
                retry=RetryPolicy(attempts=3, base_s=0.05, cap_s=0.2),
            )
            return await notifier.handle_alert(alert)

    [action] = run(scenario())

    assert (action.channel, action.status) == ("webhook", "failed")
    assert action.reason == "webhook: provider answered 500"
    assert len(provider.hits) == 3
    assert metrics.DEAD_LETTERS.labels("webhook")._value.get() == dead_before + 1
    assert directory.actions["u-dead"][0]["status"] == "failed"
    assert directory.done == {}  # not marked done: a redelivered alert tries again


# --- SMTP ---------------------------------------------------------------------------------


def test_email_arrives_as_multipart_text_and_html_with_headers() -> None:
    port = free_port()
    catcher = MailCatcher("127.0.0.1", port).start()
    try:
        channel = SmtpChannel(host="127.0.0.1", port=port, sender="Acme <care@example.test>")
        run(channel.send(message()))
    finally:
        catcher.stop()

    [mail] = catcher.inbox.to("u1@example.test")
    assert mail["To"] == "u1@example.test"
    assert mail["Subject"] == "We miss you"
    assert mail["X-Churnwatch-Action"] == "act-123"
    assert mail.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p for p in mail.walk() if not p.is_multipart()}
    assert set(parts) == {"text/plain", "text/html"}
    assert "SAVE15" in _text(parts["text/plain"])
    assert "<b>SAVE15</b>" in _text(parts["text/html"])


class Picky(Inbox):
    """A mail server that answers RCPT or DATA from a script of SMTP replies, then accepts."""

    def __init__(self, *, rcpt: list[str] | None = None, data: list[str] | None = None) -> None:
        super().__init__()
        self.rcpt_script = list(rcpt or [])
        self.data_script = list(data or [])
        self.tries = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_script:
            self.tries += 1
            return self.rcpt_script.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.tries += 1
        if self.data_script:
            return self.data_script.pop(0)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize(
    ("handler", "delivered", "tries"),
    [
        (lambda: Picky(data=["451 4.3.0 Try again later"]), True, 2),
        (lambda: Picky(rcpt=["450 4.2.1 Mailbox busy"]), True, 2),
        (lambda: Picky(data=["554 5.7.1 Message rejected"]), False, 1),
        (lambda: Picky(rcpt=["550 5.1.1 No such user"]), False, 1),
    ],
    ids=["data-4xx-transient", "rcpt-4xx-transient", "data-5xx-final", "rcpt-5xx-final"],
)
def test_smtp_4xx_is_retried_and_5xx_is_final(
    handler: Callable[[], Picky], delivered: bool, tries: int
) -> None:
    port = free_port()
    inbox = handler()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    channel = SmtpChannel(host="127.0.0.1", port=port, sender="care@example.test")
    try:
        if delivered:
            assert run(deliver_with_retries(lambda: channel.send(message()), policy=FAST)) == 2
        else:
            with pytest.raises(DeliveryFailed) as caught:
                run(deliver_with_retries(lambda: channel.send(message()), policy=FAST))
            assert caught.value.retryable is False
    finally:
        controller.stop()
    assert inbox.received == (1 if delivered else 0)
    assert inbox.tries == tries


def test_smtp_server_that_never_answers_times_out_as_transient() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        channel = SmtpChannel(
            host="127.0.0.1", port=silent.getsockname()[1], sender="c@x.test", timeout_s=0.2
        )
        policy = RetryPolicy(attempts=2, base_s=0.05, cap_s=0.1)
        retries: list[DeliveryFailed] = []
        with pytest.raises(DeliveryFailed) as caught:
            run(
                deliver_with_retries(
                    lambda: channel.send(message()),
                    policy=policy,
                    on_retry=lambda n, exc: retries.append(exc),
                )
            )
    assert caught.value.retryable is True
    assert len(retries) == 1


def test_smtp_connection_refused_is_transient() -> None:
    channel = SmtpChannel(host="127.0.0.1", port=free_port(), sender="c@x.test", timeout_s=1)
    with pytest.raises(DeliveryFailed) as caught:
        run(channel.send(message()))
    assert caught.value.retryable is True


def _text(part: Email) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "utf-8")
