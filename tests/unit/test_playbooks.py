"""Playbook file: the default loads, bad files fail with a message that says what to fix."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.errors import ConfigError
from services.notifier.core.playbook_book import (
    BANDS,
    STAGES,
    TIERS,
    PlaybookBook,
    parse_duration,
)
from services.notifier.core.playbooks import DEFAULT_PLAYBOOKS, load_playbooks


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "playbooks.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return path


def _doc(**action: Any) -> dict[str, Any]:
    """A one-playbook file whose single action is overridden by ``action``."""
    base = {"channel": "email", "template": "coupon_offer", "offer": "SAVE15", "delay": "0s"}
    return {"playbooks": [{"name": "p1", "actions": [base | action]}]}


def test_default_file_loads_with_documented_defaults() -> None:
    book = load_playbooks()
    d = book.defaults
    assert d.control_share == 0.1
    assert (d.frequency_cap.max_contacts, d.frequency_cap.window_days) == (3, 7)
    assert (d.quiet_hours.start, d.quiet_hours.end) == ("21:00", "08:00")
    assert "first" in DEFAULT_PLAYBOOKS.read_text().lower()


def test_every_segment_and_band_has_a_default_playbook() -> None:
    book = load_playbooks()
    for stage, tier, band in itertools.product(STAGES, TIERS, BANDS):
        assert book.match(stage, tier, band) is not None, (stage, tier, band)


@pytest.mark.parametrize(
    ("stage", "tier", "band", "expected"),
    [
        ("active", "high", "critical", "high-value-critical"),
        ("loyal", "high", "high", "high-value"),
        ("churned", "high", "critical", "churned-winback"),
        ("dormant", "medium", "high", "dormant-reactivation"),
        ("new", "low", "high", "new-user-guide"),
        ("new", "high", "critical", "high-value-critical"),
        ("at-risk", "medium", "critical", "medium-value-coupon"),
        ("active", "low", "high", "low-value-push"),
    ],
)
def test_default_matching(stage: str, tier: str, band: str, expected: str) -> None:
    playbook = load_playbooks().match(stage, tier, band)
    assert playbook is not None and playbook.name == expected


def test_high_value_critical_hands_off_then_emails() -> None:
    playbook = load_playbooks().match("active", "high", "critical")
    assert playbook is not None
    assert [a.channel for a in playbook.actions][:2] == ["webhook", "email"]
    assert playbook.actions[1].offer


def test_first_matching_playbook_wins() -> None:
    action = [{"channel": "push", "template": "nudge"}]
    book = PlaybookBook.model_validate(
        {
            "playbooks": [
                {
                    "name": "narrow",
                    "match": {"tiers": ["high"], "bands": ["critical"]},
                    "actions": action,
                },
                {"name": "broad", "match": {"stages": ["*"]}, "actions": action},
                {"name": "never", "match": {"tiers": ["high"]}, "actions": action},
            ]
        }
    )
    assert [book.match("active", "high", b).name for b in ("critical", "high")] == [  # type: ignore[union-attr]
        "narrow",
        "broad",
    ]


def test_no_match_gives_none() -> None:
    book = PlaybookBook.model_validate(
        {
            "playbooks": [
                {
                    "name": "only",
                    "match": {"bands": ["critical"]},
                    "actions": [{"channel": "push", "template": "nudge"}],
                }
            ]
        }
    )
    assert book.match("active", "low", "high") is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            _doc(channel="fax"),
            "playbook 'p1': actions[0].channel: unknown channel 'fax'; "
            "expected one of: email, sms, push, webhook",
        ),
        (
            _doc(delay="2 hours"),
            "playbook 'p1': actions[0].delay: bad duration '2 hours'; "
            "use a number and a unit s, m, h or d, like '0s', '30m' or '2h'",
        ),
        (
            _doc(template="../secret"),
            "playbook 'p1': actions[0].template: bad template name '../secret'; "
            "use lower-case letters, digits, _ or -",
        ),
        (
            {
                "playbooks": [
                    {
                        "name": "p1",
                        "match": {"bands": ["severe"]},
                        "actions": [{"channel": "push", "template": "nudge"}],
                    }
                ]
            },
            "playbook 'p1': match.bands: unknown band 'severe'; "
            "expected '*' or one of: low, medium, high, critical",
        ),
        (
            {
                "playbooks": [
                    {
                        "name": "p1",
                        "match": {"stages": ["sleeping"]},
                        "actions": [{"channel": "push", "template": "nudge"}],
                    }
                ]
            },
            "playbook 'p1': match.stages: unknown stage 'sleeping'; expected '*' or one of: "
            "new, active, loyal, at-risk, dormant, churned, reactivated",
        ),
        (
            {
                "playbooks": [
                    {
                        "name": "p1",
                        "match": {"tiers": ["gold"]},
                        "actions": [{"channel": "push", "template": "nudge"}],
                    }
                ]
            },
            "playbook 'p1': match.tiers: unknown tier 'gold'; "
            "expected '*' or one of: high, medium, low",
        ),
        (
            {
                "playbooks": [
                    {
                        "name": "p1",
                        "match": {"tiers": []},
                        "actions": [{"channel": "push", "template": "nudge"}],
                    }
                ]
            },
            "playbook 'p1': match.tiers: no tiers listed; use ['*'] to match every tier",
        ),
        (
            {"playbooks": [{"actions": [{"channel": "push", "template": "nudge"}]}]},
            "playbook '#1': name: Field required",
        ),
        (
            {"playbooks": [{"name": "p1", "actions": []}]},
            "playbook 'p1': actions: no actions; list at least one",
        ),
        (
            {
                "playbooks": [
                    {"name": "{vip}", "actions": [{"channel": "push", "template": "nudge"}]}
                ]
            },
            "playbook '{{vip}}': name: bad playbook name '{{vip}}'; leave out {{ and }}",
        ),
        (
            {"playbooks": [{"name": "p1", "actions": [{"chanel": "push", "template": "nudge"}]}]},
            "playbook 'p1': actions[0].channel: Field required\n"
            "{path}: playbook 'p1': actions[0].chanel: Extra inputs are not permitted",
        ),
        (
            {"defaults": {"quiet_hours": {"start": "25:00"}}} | _doc(),
            "defaults.quiet_hours.start: bad time '25:00'; "
            "use HH:MM on a 24-hour clock, like '21:00'",
        ),
        ({"playbooks": []}, "playbooks: no playbooks; list at least one"),
        (
            {"defaults": {"default_timezone": "Mars/Base"}} | _doc(),
            "defaults.default_timezone: unknown time zone 'Mars/Base'; use an IANA name like 'UTC'",
        ),
        (
            {"defaults": {"control_share": 1.5}} | _doc(),
            "defaults.control_share: Input should be less than or equal to 1",
        ),
        (
            {"playbooks": [_doc()["playbooks"][0], _doc()["playbooks"][0]]},
            "playbooks: playbook names must be unique; repeated: p1",
        ),
    ],
)
def test_broken_file_gives_clear_message(tmp_path: Path, doc: Any, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_playbooks(path)
    assert str(info.value) == f"{path}: " + message.format(path=path)


def test_unknown_template_names_each_locale_missing_it(tmp_path: Path) -> None:
    path = _write(tmp_path, _doc(channel="push", template="nope"))
    root = DEFAULT_PLAYBOOKS.parent / "templates"
    with pytest.raises(ConfigError) as info:
        load_playbooks(path)
    assert str(info.value) == "\n".join(
        f"{path}: playbook 'p1': actions[0].template: template 'nope' for push is missing "
        f"in locale {loc!r} (no nope.txt.j2 under {root / loc})"
        for loc in ("en", "zh-CN")
    )


def test_template_missing_in_one_locale_only(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    for part in ("subject", "txt", "html"):
        (root / "en").mkdir(parents=True, exist_ok=True)
        (root / "en" / f"coupon_offer.{part}.j2").write_text("x")
    (root / "zh-CN").mkdir()
    (root / "zh-CN" / "coupon_offer.txt.j2").write_text("x")
    path = _write(tmp_path, _doc())
    with pytest.raises(ConfigError) as info:
        load_playbooks(path, templates_dir=root)
    assert str(info.value) == (
        f"{path}: playbook 'p1': actions[0].template: template 'coupon_offer' for email is "
        f"missing in locale 'zh-CN' (no coupon_offer.subject.j2, coupon_offer.html.j2 "
        f"under {root / 'zh-CN'})"
    )


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read the playbook file"):
        load_playbooks(missing)
    bad = _write(tmp_path, "playbooks: [unclosed\n")
    with pytest.raises(ConfigError, match=r"playbooks\.yaml: not valid YAML"):
        load_playbooks(bad)
    listy = _write(tmp_path, "- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping with 'defaults' and 'playbooks'"):
        load_playbooks(listy)


def test_a_setting_that_moved_to_the_scorer_is_refused_with_where_it_went(
    tmp_path: Path,
) -> None:
    doc = _doc() | {"defaults": {"winback_window_days": 14}}
    with pytest.raises(ConfigError, match="set CHURNWATCH_SCORER_WINBACK_WINDOW_DAYS instead"):
        load_playbooks(_write(tmp_path, doc))


def test_parse_duration() -> None:
    assert parse_duration("90s") == 90.0
    assert parse_duration("1h30m") == 5400.0
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("-1h")
