"""Templates: every default template renders in both locales, safely and completely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.errors import ConfigError, InvalidEvent
from services.notifier.core.playbooks import load_playbooks
from services.notifier.core.templates import (
    Brand,
    Renderer,
    build_context,
    render,
    resolve_locale,
)

BRAND = Brand(name="Acme", url="https://acme.example")
ALERT: dict[str, Any] = {
    "schema_version": 1,
    "alert_id": "al-7",
    "user_id": "u-123",
    "risk": 0.83,
    "score": 83,
    "band": "critical",
    "previous_band": "high",
    "trigger": "band_up",
    "segment": {"stage": "active", "tier": "high"},
    "reasons": [
        {
            "feature": "recency_days",
            "label": "No visit for 12 days",
            "contribution": 0.4,
            "value": 12,
        },
        {
            "feature": "sessions_change",
            "label": "Half as many sessions",
            "contribution": 0.2,
            "value": -0.5,
        },
    ],
    "model_version": "m-2026-01",
    "horizon_days": 14,
    "timezone": "Asia/Shanghai",
    "occurred_at": "2026-01-15T10:00:00Z",
}
ACTIONS = sorted(
    {(a.template, a.channel, a.offer) for p in load_playbooks().playbooks for a in p.actions}
)


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
@pytest.mark.parametrize(("template", "channel", "offer"), ACTIONS)
def test_default_templates_render_with_offer(
    template: str, channel: str, offer: str | None, locale: str
) -> None:
    out = render(template, channel, locale=locale, alert=ALERT, offer=offer, brand=BRAND)
    assert out.text.strip()
    if offer:
        assert offer in out.text
    if channel == "email":
        assert out.subject and "\n" not in out.subject
        assert out.html and out.html.lstrip().startswith("<!DOCTYPE html>")
        assert 'style="' in out.html and "<style" not in out.html  # inline styles only
        assert f'lang="{locale}"' in out.html
        assert BRAND.url in out.html and f"{BRAND.url}/preferences" in out.text
        if offer:
            assert offer in out.html
    else:
        assert out.subject is None and out.html is None


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
@pytest.mark.parametrize(("template", "channel", "offer"), ACTIONS)
def test_default_templates_render_without_offer(
    template: str, channel: str, offer: str | None, locale: str
) -> None:
    out = render(template, channel, locale=locale, alert=ALERT, offer=None, brand=BRAND)
    assert "None" not in out.text


def test_sms_fits_two_segments() -> None:
    out = render(
        "offer_reminder", "sms", locale="en", alert=ALERT, offer="EXCLUSIVE30", brand=BRAND
    )
    assert len(out.text) <= 306


@pytest.mark.parametrize(("locale", "word"), [("en", "critical"), ("zh-CN", "极高")])
def test_hand_off_explains_reasons_in_plain_words(locale: str, word: str) -> None:
    out = render("cs_handoff", "webhook", locale=locale, alert=ALERT, offer="X1", brand=BRAND)
    assert "No visit for 12 days" in out.text and "Half as many sessions" in out.text
    assert "recency_days" not in out.text
    assert "u-123" in out.text and word in out.text


def test_locale_fallback() -> None:
    out = render("nudge", "push", locale="zh_CN", alert=ALERT, offer=None, brand=BRAND)
    assert "等您" in out.text
    for locale in ("fr-FR", None, "zh-TW"):
        out = render("nudge", "push", locale=locale, alert=ALERT, offer=None, brand=BRAND)
        assert out.text.startswith("Your Acme")
    assert resolve_locale("EN-gb", ("en", "zh-CN")) == "en"


def _tmp_templates(tmp_path: Path, files: dict[str, str]) -> Renderer:
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    return Renderer(tmp_path)


def test_falls_back_to_english_when_a_locale_lacks_the_template(tmp_path: Path) -> None:
    renderer = _tmp_templates(
        tmp_path, {"en/hi.txt.j2": "hello {{ offer }}", "zh-CN/other.txt.j2": "x"}
    )
    out = renderer.render("hi", "push", locale="zh-CN", alert=ALERT, offer="O1", brand=BRAND)
    assert out.text == "hello O1\n"


def test_templates_never_see_contact_data(tmp_path: Path) -> None:
    alert = ALERT | {"email": "someone@example.com", "phone": "+15551234567"}
    assert not {"email", "phone", "timezone"} & set(build_context(alert, offer=None, brand=BRAND))
    renderer = _tmp_templates(tmp_path, {"en/leak.txt.j2": "to {{ email }}"})
    with pytest.raises(ConfigError, match=r"leak\.txt\.j2: UndefinedError: 'email' is undefined"):
        renderer.render("leak", "sms", locale="en", alert=alert, offer=None, brand=BRAND)


def test_sandbox_blocks_unsafe_attributes(tmp_path: Path) -> None:
    renderer = _tmp_templates(tmp_path, {"en/evil.txt.j2": "{{ offer.__class__.__mro__ }}"})
    with pytest.raises(ConfigError, match="SecurityError"):
        renderer.render("evil", "push", locale="en", alert=ALERT, offer="x", brand=BRAND)


def test_html_is_escaped_and_text_is_not() -> None:
    brand = Brand(name="Tom & Jerry's", url="https://tj.example")
    out = render("coupon_offer", "email", locale="en", alert=ALERT, offer="<B>", brand=brand)
    assert out.html is not None and "Tom &amp; Jerry" in out.html and "&lt;B&gt;" in out.html
    assert "Tom & Jerry's" in out.text and "<B>" in out.text


def test_alert_without_required_fields_is_rejected() -> None:
    alert = {k: v for k, v in ALERT.items() if k != "segment"}
    with pytest.raises(InvalidEvent, match="alert lacks segment"):
        render("nudge", "push", locale="en", alert=alert, offer=None, brand=BRAND)


def test_unknown_channel_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown channel 'fax'"):
        render("nudge", "fax", locale="en", alert=ALERT, offer=None, brand=BRAND)
