"""Property tests of the purge plan parser: whatever the parameters hold, it refuses with InvalidPurgePlan or
accepts, and every accepted target becomes a cancel request the worker accepts, for now, under that night's id."""

import json
from datetime import date
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from callcancel.errors import InvalidPurgePlan
from callcancel.models import parse_cancel_request
from callcancel.purge import parse_plan_documents, plan_message, purge_request_id

NIGHT = date(2026, 11, 23)
FIELDS = [
    "provider",
    "account",
    "call_id",
    "application_id",
    "deployment_id",
    "reason",
    "version",
    "when",
    "request_id",
]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
# Values that sit near the rules: valid and invalid ids, the providers, numbers, booleans, empty and long text.
near_values = st.one_of(
    st.sampled_from(["ryng", "plum", "acme", "a-b", "A", "", "c-1", "../x", "x" * 65, "now", "nightly", 1]),
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=600),
)
near_targets = st.dictionaries(st.sampled_from(FIELDS), near_values, max_size=6)
ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True) | st.integers(min_value=0, max_value=10**12)
accounts = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
optional = {"reason": st.text(max_size=500), "version": st.just(1)}
valid_targets = st.fixed_dictionaries(
    {"provider": st.just("ryng"), "account": accounts, "call_id": ids}, optional=optional
) | st.fixed_dictionaries(
    {"provider": st.just("plum"), "account": accounts, "application_id": ids, "deployment_id": ids}, optional=optional
)
near_plans = st.fixed_dictionaries({"targets": st.lists(valid_targets | near_targets, max_size=6)})


def documents_from(values: list[Any]) -> dict[str, str]:
    return {f"/stack/purge-plan/p{n}": json.dumps(value) for n, value in enumerate(values)}


def assert_accepted_targets_are_cancel_requests(documents: dict[str, str]) -> None:
    try:
        plan = parse_plan_documents(documents)
    except InvalidPurgePlan:
        return
    for target in plan.targets:
        message = plan_message(target, NIGHT)
        request = parse_cancel_request(message.body)
        assert request.when == "now"
        assert (request.provider, request.account, request.target) == (target.provider, target.account, target.target)
        assert request.request_id == purge_request_id(NIGHT, target.provider, target.account, target.target)
        assert message.provider == target.provider


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=3))
@example(["[" * 100_000])
@example(['{"targets": [' * 5000])
@example(["NaN", "Infinity", '{"targets": [], "targets": 1}'])
def test_any_text_is_a_plan_or_invalid_purge_plan(texts: list[str]) -> None:
    assert_accepted_targets_are_cancel_requests({f"/stack/purge-plan/p{n}": t for n, t in enumerate(texts)})


@settings(max_examples=150, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=3))
def test_any_json_is_a_plan_or_invalid_purge_plan(values: list[Any]) -> None:
    assert_accepted_targets_are_cancel_requests(documents_from(values))


@settings(max_examples=200, deadline=None)
@given(st.lists(near_plans, min_size=1, max_size=3))
def test_plans_near_the_rules_are_refused_or_become_valid_cancel_requests(plans: list[dict[str, Any]]) -> None:
    assert_accepted_targets_are_cancel_requests(documents_from(plans))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(valid_targets, max_size=5), min_size=1, max_size=3))
def test_valid_targets_are_all_accepted_in_order(parts: list[list[dict[str, Any]]]) -> None:
    plan = parse_plan_documents(documents_from([{"targets": part} for part in parts]))

    expected = [str(t.get("call_id", f"{t.get('application_id')}/{t.get('deployment_id')}")) for p in parts for t in p]
    assert [target.target for target in plan.targets] == expected
    assert_accepted_targets_are_cancel_requests(documents_from([{"targets": part} for part in parts]))
