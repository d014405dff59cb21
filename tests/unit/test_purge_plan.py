"""The purge plan contract (a cancel request minus `when` and `request_id`) and the purge's request ids."""

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from callcancel.errors import InvalidPurgePlan
from callcancel.models import PlumPurgeTarget, RyngPurgeTarget, parse_purge_plan
from callcancel.purge import purge_date_of, purge_request_id
from callcancel.settings import PurgeSettings
from tests.support import EVENTS

RYNG = {"provider": "ryng", "account": "acme", "call_id": "c-1"}
PLUM = {"provider": "plum", "account": "acme", "application_id": "a1", "deployment_id": "d1"}


def test_a_valid_plan_keeps_every_target_in_order() -> None:
    # Given a plan with a Ryng call (numeric id) and a Plum deployment
    plan = parse_purge_plan({"targets": [{**RYNG, "call_id": 42, "reason": "nightly"}, PLUM]})

    # Then both are typed targets, with the same normalisation as a cancel request
    assert [type(t) for t in plan.targets] == [RyngPurgeTarget, PlumPurgeTarget]
    assert plan.targets[0].target == "42"
    assert plan.targets[1].target == "a1/d1"


def test_an_empty_plan_is_valid() -> None:
    assert parse_purge_plan({"targets": []}).targets == []


INVALID = [
    ("not an object", [], "plan: body"),
    ("no targets", {}, "plan: targets: Field required"),
    ("unknown top-level field", {"targets": [], "extra": 1}, "plan: extra: unknown field"),
    ("unknown target field", {"targets": [RYNG, {**PLUM, "priority": "high"}]}, "target 1: priority: unknown field"),
    ("bad provider", {"targets": [{**RYNG, "provider": "acme"}]}, "target 0: provider: must be 'ryng' or 'plum'"),
    ("bad call id", {"targets": [RYNG, RYNG, {**RYNG, "call_id": "../x"}]}, "target 2: call_id:"),
    (
        "missing deployment",
        {"targets": [{k: v for k, v in PLUM.items() if k != "deployment_id"}]},
        "target 0: deployment_id",
    ),
    ("when refused", {"targets": [{**RYNG, "when": "now"}]}, "target 0: when: not allowed"),
    ("request_id refused", {"targets": [{**RYNG, "request_id": "r-1"}]}, "target 0: request_id: not allowed"),
]


@pytest.mark.parametrize(("plan", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_an_invalid_plan_is_refused_naming_the_target_and_field(plan: Any, message: str) -> None:
    with pytest.raises(InvalidPurgePlan, match="invalid purge plan") as raised:
        parse_purge_plan(plan)
    assert message in str(raised.value)


def test_request_id_is_the_same_for_the_same_night_and_target() -> None:
    night = date(2026, 11, 24)
    first = purge_request_id(night, "ryng", "acme", "c-1")

    assert first == purge_request_id(night, "ryng", "acme", "c-1")
    assert first.startswith("purge-2026-11-24-")
    assert len(first.rsplit("-", 1)[1]) == 16


def test_request_id_differs_by_night_and_by_target() -> None:
    night = date(2026, 11, 24)
    ids = {
        purge_request_id(night, "ryng", "acme", "c-1"),
        purge_request_id(date(2026, 11, 25), "ryng", "acme", "c-1"),
        purge_request_id(night, "ryng", "acme", "c-2"),
        purge_request_id(night, "ryng", "other", "c-1"),
        purge_request_id(night, "plum", "acme", "c-1"),
    }
    assert len(ids) == 5


def test_purge_date_is_the_utc_date_of_the_event_time() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    event = json.loads((EVENTS / "scheduler_nightly_purge.json").read_text())

    assert purge_date_of(event, now) == date(2026, 11, 23)
    assert purge_date_of({"time": "2026-11-23T23:30:00-05:00"}, now) == date(2026, 11, 24)
    assert purge_date_of({}, now) == date(2030, 1, 1)
    assert purge_date_of({"time": "yesterday"}, now) == date(2030, 1, 1)


def test_purge_settings_need_the_plan_and_the_queue() -> None:
    settings = PurgeSettings.from_env(
        {"PURGE_PLAN_PARAMETER": "plan", "CANCEL_QUEUE_URL": "https://q", "DEFERRED_TABLE": ""}
    )
    assert settings.deferred_table is None
    with pytest.raises(RuntimeError, match="PURGE_PLAN_PARAMETER"):
        PurgeSettings.from_env({"CANCEL_QUEUE_URL": "https://q"})
