"""LeftoverCheck: which deferred requests the worker has already received, by their outcome records."""

from typing import Any

import pytest

from callcancel.errors import PurgeError
from callcancel.purge import LeftoverCheck


class Table:
    """BatchGetItem over a dict of outcome records, leaving the first `unprocessed` answers' keys unread."""

    def __init__(self, records: dict[str, str], unprocessed: int = 0) -> None:
        self.records, self.unprocessed, self.calls = records, unprocessed, 0

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        (wanted,) = RequestItems.values()
        assert len(wanted["Keys"]) <= LeftoverCheck.BATCH
        if self.unprocessed:
            self.unprocessed -= 1
            return {"Responses": {"outcomes": []}, "UnprocessedKeys": RequestItems}
        keys = [key["id"]["S"] for key in wanted["Keys"]]
        items = [{"id": {"S": k}, "outcome": {"S": self.records[k]}} for k in keys if k in self.records]
        return {"Responses": {"outcomes": items}}


def test_a_request_counts_as_received_when_its_record_says_anything_but_deferred() -> None:
    records = {"a": "cancelled", "b": "retrying", "c": "not_found", "d": "deferred"}
    check = LeftoverCheck(Table(records), "outcomes")  # type: ignore[arg-type]
    assert check.received(["a", "b", "c", "d", "e"]) == {"a", "b", "c"}


def test_keys_are_read_100_at_a_time_and_unprocessed_ones_again() -> None:
    table = Table({f"k{n}": "cancelled" for n in range(0, 250, 2)}, unprocessed=1)
    check = LeftoverCheck(table, "outcomes")  # type: ignore[arg-type]
    assert check.received([f"k{n}" for n in range(250)]) == {f"k{n}" for n in range(0, 250, 2)}
    assert table.calls == 4  # 3 batches, the first read twice


def test_records_left_unread_fail_the_run_rather_than_risk_a_second_call() -> None:
    check = LeftoverCheck(Table({}, unprocessed=LeftoverCheck.ROUNDS), "outcomes")  # type: ignore[arg-type]
    with pytest.raises(PurgeError, match="1 deferred requests unread"):
        check.received(["a"])
