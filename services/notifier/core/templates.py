"""Message rendering: sandboxed Jinja2 templates, one folder per locale.

Files live at ``templates/<locale>/<template>.<part>.j2``: email needs the
``subject``, ``txt`` and ``html`` parts, push, SMS and webhook only ``txt``.
Templates see a fixed, whitelisted view of the alert (never contact data: the
channel adapters add the address) and ``StrictUndefined`` turns a typo into an
error instead of an empty string.

>>> alert = {"alert_id": "a1", "user_id": "u1", "band": "critical", "score": 91,
...          "segment": {"stage": "active", "tier": "high"}, "horizon_days": 14,
...          "reasons": [{"feature": "recency_days", "label": "No visit for 12 days",
...                       "contribution": 0.4, "value": 12.0}]}
>>> out = render("cs_handoff", "webhook", locale="en", alert=alert, offer="VIP30",
...              brand=Brand(name="Acme", url="https://acme.example"))
>>> "No visit for 12 days" in out.text, "VIP30" in out.text, out.subject, out.html
(True, True, None, None)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from services.common.errors import ConfigError, InvalidEvent

DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
FALLBACK_LOCALE = "en"
TEMPLATE_PARTS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "txt", "html"),
    "sms": ("txt",),
    "push": ("txt",),
    "webhook": ("txt",),
}
_REQUIRED_ALERT_FIELDS = ("alert_id", "user_id", "band", "score", "segment", "horizon_days")


@dataclass(frozen=True, slots=True)
class Brand:
    """Who the message comes from; ``preferences_url`` defaults to ``<url>/preferences``."""

    name: str
    url: str
    preferences_url: str = ""
    color: str = "#2f6fed"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered message; ``subject`` and ``html`` are None outside email."""

    subject: str | None
    text: str
    html: str | None


def available_locales(root: Path) -> tuple[str, ...]:
    """Locale folders under ``root``, sorted (folders starting with ``_`` or ``.`` are not)."""
    if not root.is_dir():
        return ()
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] not in "_."))


def missing_files(root: Path, template: str, channel: str, *, locale: str) -> list[str]:
    """File names this template needs in ``locale`` that do not exist."""
    names = [f"{template}.{part}.j2" for part in TEMPLATE_PARTS[channel]]
    return [n for n in names if not (root / locale / n).is_file()]


def resolve_locale(locale: str | None, available: tuple[str, ...]) -> str:
    """The best available locale: exact, then the language alone, then English.

    >>> resolve_locale("zh_cn", ("en", "zh-CN")), resolve_locale("zh-TW", ("en", "zh"))
    ('zh-CN', 'zh')
    >>> resolve_locale("fr-FR", ("en", "zh-CN")), resolve_locale(None, ("en",))
    ('en', 'en')
    """
    by_key = {name.lower(): name for name in available}
    wanted = (locale or FALLBACK_LOCALE).replace("_", "-").lower()
    for key in (wanted, wanted.split("-")[0], FALLBACK_LOCALE):
        if key in by_key:
            return by_key[key]
    return FALLBACK_LOCALE


def build_context(alert: Mapping[str, Any], *, offer: str | None, brand: Brand) -> dict[str, Any]:
    """The only values templates see: alert facts, reasons as plain words, offer and brand."""
    missing = [k for k in _REQUIRED_ALERT_FIELDS if alert.get(k) is None]
    if missing:
        raise InvalidEvent(f"alert lacks {', '.join(missing)} needed by templates", path=missing[0])
    segment = alert["segment"]
    return {
        "alert_id": str(alert["alert_id"]),
        "user_id": str(alert["user_id"]),
        "band": str(alert["band"]),
        "previous_band": alert.get("previous_band"),
        "score": int(alert["score"]),
        "risk_pct": round(float(alert.get("risk", alert["score"] / 100)) * 100),
        "stage": str(segment.get("stage", "")),
        "tier": str(segment.get("tier", "")),
        "reasons": [str(r.get("label") or r.get("feature")) for r in alert.get("reasons") or ()],
        "horizon_days": int(alert["horizon_days"]),
        "model_version": str(alert.get("model_version") or "unknown"),
        "offer": offer,
        "brand": {
            "name": brand.name,
            "url": brand.url,
            "preferences_url": brand.preferences_url or f"{brand.url.rstrip('/')}/preferences",
            "color": brand.color,
        },
    }


class Renderer:
    """Renders templates from one folder; build once and reuse (the Jinja cache lives here)."""

    def __init__(self, root: str | Path = DEFAULT_TEMPLATES_DIR) -> None:
        self.root = Path(root)
        self.locales = available_locales(self.root)
        self._env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.root)),
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(
        self,
        template: str,
        channel: str,
        *,
        locale: str | None,
        alert: Mapping[str, Any],
        offer: str | None,
        brand: Brand,
    ) -> Rendered:
        """Render every part of ``template`` for ``channel`` in the best locale."""
        if channel not in TEMPLATE_PARTS:
            raise ConfigError(f"unknown channel {channel!r} for template {template!r}")
        context = build_context(alert, offer=offer, brand=brand)
        chosen = resolve_locale(locale, self.locales)
        if missing_files(self.root, template, channel, locale=chosen):
            chosen = FALLBACK_LOCALE
        parts = {
            part: self._part(chosen, template, part, context) for part in TEMPLATE_PARTS[channel]
        }
        subject = parts.get("subject")
        return Rendered(
            subject=" ".join(subject.split()) if subject is not None else None,
            text=parts["txt"].strip() + "\n",
            html=parts.get("html"),
        )

    def _part(self, locale: str, template: str, part: str, context: dict[str, Any]) -> str:
        name = f"{locale}/{template}.{part}.j2"
        try:
            return self._env.get_template(name).render(context)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"{self.root / name}: {type(exc).__name__}: {exc}") from exc


@lru_cache(maxsize=8)
def _renderer(root: str) -> Renderer:
    return Renderer(root)


def render(
    template: str,
    channel: str,
    *,
    locale: str | None,
    alert: Mapping[str, Any],
    offer: str | None,
    brand: Brand,
    root: str | Path = DEFAULT_TEMPLATES_DIR,
) -> Rendered:
    """Render with a cached ``Renderer`` for ``root``; see ``Renderer.render``."""
    return _renderer(str(root)).render(
        template, channel, locale=locale, alert=alert, offer=offer, brand=brand
    )
