"""A loopback SMTP server that keeps what it receives (the demo's mail catcher).

It stands in for a real mail server in the demo and the tests: the mail really
travels over SMTP, and ``received`` counts it at the server, not at the sender.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Inbox:
    messages: list[Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(message_from_bytes(envelope.original_content or envelope.content))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    @property
    def received(self) -> int:
        with self.lock:
            return len(self.messages)

    def to(self, address: str) -> list[Message]:
        with self.lock:
            return [
                m
                for m, (_, rcpt) in zip(self.messages, self.envelopes, strict=True)
                if address in rcpt
            ]


class MailCatcher:
    """Start with ``start()``, read ``inbox``, stop with ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2525) -> None:
        self.inbox = Inbox()
        self.controller = Controller(self.inbox, hostname=host, port=port)

    def start(self) -> MailCatcher:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def serve_forever(*, host: str, port: int) -> None:
    catcher = MailCatcher(host, port).start()
    print(f"mail catcher listening on {host}:{port}", flush=True)
    try:
        while True:
            time.sleep(5)
            print(f"received {catcher.inbox.received} messages", flush=True)
    finally:
        catcher.stop()
