"""Structured logging: one JSON object per line, no personal data.

Call sites pass identifiers and counts through ``extra``; they never pass event
properties, contact details or message bodies. :func:`scrub` is a last line of
defence that masks anything shaped like an e-mail address or a phone number.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PHONE = re.compile(r"\+?\d[\d ()-]{7,}\d")
_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def scrub(text: str) -> str:
    """Mask e-mail addresses and phone numbers.

    >>> scrub("sent to ada@example.com and +44 20 7946 0958")
    'sent to <email> and <phone>'
    """
    return _PHONE.sub("<phone>", _EMAIL.sub("<email>", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


# Libraries whose debug lines carry message payloads (Faust logs every send with its
# value, kafka clients their records): never below INFO, whatever the level asked.
_PAYLOAD_LOGGERS = ("kafka", "aiokafka", "faust.topics", "faust.transport")


def worker_logging_config(level: str = "info", fmt: str = "json") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for Faust workers, which replace the root handler.

    Without it a worker logs through Faust's own plain-text handler on stdout,
    past :class:`JsonFormatter` and its masking.

    >>> config = worker_logging_config("debug")
    >>> config["root"]["level"], config["loggers"]["faust.topics"]["level"]
    ('DEBUG', 'INFO')
    """
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    asked = logging.getLevelName(level.upper())
    floors = {name: logging.INFO for name in _PAYLOAD_LOGGERS} | {
        "kafka": logging.WARNING,
        "aiokafka": logging.WARNING,
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
        "loggers": {
            name: {"level": logging.getLevelName(max(floor, asked))}
            for name, floor in floors.items()
        },
    }


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for payloads in _PAYLOAD_LOGGERS:
        logging.getLogger(payloads).setLevel(max(logging.INFO, root.level))
