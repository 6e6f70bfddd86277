"""``churnwatch backfill``'s check that no scorer worker runs, with Kafka's admin faked:
a coordinator not ready yet is asked again; a group with members, or an error Kafka
keeps giving, is a refusal with a message."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

import services.backfill as backfill
from services.common.errors import ChurnwatchError, ConfigError
from services.scorer.config import ScorerSettings

SETTINGS = ScorerSettings(scorer_group="cw-scorer")
NOT_FOUND = "[Error 69] GroupIdNotFoundError: Group cw-scorer not found."


class FakeAdmin:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.asked = 0

    def describe_groups(self, groups: list[str]) -> dict[str, Any]:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {groups[0]: answer}

    def close(self) -> None:
        pass


def with_admin(monkeypatch: pytest.MonkeyPatch, answers: list[Any]) -> FakeAdmin:
    admin = FakeAdmin(answers)
    monkeypatch.setattr(backfill, "make_admin", lambda settings: admin)
    monkeypatch.setattr(backfill.time, "sleep", lambda s: None)
    return admin


def test_a_coordinator_not_ready_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = with_admin(
        monkeypatch,
        [
            CoordinatorNotAvailableError("FindCoordinatorResponse error"),
            {"members": [], "error": "[Error 15] CoordinatorNotAvailableError"},
            {"members": [], "error": NOT_FOUND},
        ],
    )
    backfill.refuse_running_scorer(SETTINGS)  # a group never started: no refusal
    assert admin.asked == 3


def test_running_workers_refuse_the_backfill(monkeypatch: pytest.MonkeyPatch) -> None:
    with_admin(monkeypatch, [{"members": [{"member_id": "a"}, {"member_id": "b"}]}])
    with pytest.raises(ConfigError, match="has 2 running member"):
        backfill.refuse_running_scorer(SETTINGS)


def test_an_error_kafka_keeps_giving_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    with_admin(monkeypatch, [GroupAuthorizationFailedError("not allowed")])
    with pytest.raises(ChurnwatchError, match="not allowed"):
        backfill.refuse_running_scorer(SETTINGS)
    with_admin(monkeypatch, [{"members": [], "error": "[Error 30] GroupAuthorizationFailed"}])
    with pytest.raises(ConfigError, match="cannot tell whether scorer workers run"):
        backfill.refuse_running_scorer(SETTINGS)
