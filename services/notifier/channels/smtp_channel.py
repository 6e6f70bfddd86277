"""E-mail over SMTP (STARTTLS and auth when configured), multipart text + HTML."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid

from services.common.errors import DeliveryFailed
from services.notifier.channels.base import Message

# 4xx replies and dropped connections are worth another try; 5xx are final.
_TRANSIENT = (
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
    ConnectionError,
    TimeoutError,
    OSError,
)


class SmtpChannel:
    name = "email"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        timeout_s: float = 10.0,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.timeout_s = timeout_s
        self.starttls = starttls
        self.username = username
        self.password = password

    def _build(self, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Message-ID"] = make_msgid(domain="churnwatch.local")
        if message.idempotency_key:
            mail["X-Churnwatch-Action"] = message.idempotency_key
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        return mail

    def _send_blocking(self, message: Message) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(self._build(message))
        except smtplib.SMTPResponseException as exc:
            raise DeliveryFailed(
                f"SMTP {exc.smtp_code}", retryable=400 <= exc.smtp_code < 500
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            # 4xx at RCPT (mailbox busy, greylisting) is temporary like any other 4xx.
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryFailed(
                f"SMTP refused the recipient ({', '.join(map(str, codes))})",
                retryable=bool(codes) and all(400 <= c < 500 for c in codes),
            ) from exc
        except _TRANSIENT as exc:
            raise DeliveryFailed(f"SMTP {self.host}:{self.port}: {type(exc).__name__}") from exc

    async def send(self, message: Message) -> None:
        await asyncio.to_thread(self._send_blocking, message)
