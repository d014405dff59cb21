"""Publishing without a network: CSV validation, where the queues are, and the batch sender (botocore Stubber)."""

import io
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from callcancel.errors import InvalidRequest
from callcancel_tools import producer
from callcancel_tools.locate import LocateError, QueueLocator, SamConfig, read_samconfig
from callcancel_tools.producer import CSV_COLUMNS, BatchSender, CsvFile, InvalidCsv, Row, encode, publish, read_csv

HEADER = ",".join(CSV_COLUMNS)


def csv_bytes(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())


REPO = Path(__file__).resolve().parents[2]
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/cancel-requests"


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A client that never reaches a network: a call without a stubbed answer fails the test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return boto3.client("sqs", region_name="us-east-1", endpoint_url="https://sqs.us-east-1.amazonaws.com")


# ---- the CSV file -------------------------------------------------------------------------------


def test_a_good_file_gives_the_exact_bodies_with_empty_cells_absent() -> None:
    lines = csv_bytes(f"{HEADER}\nryng,acme,r-1,,,,,\nplum,acme,,7001,3,nightly,quiet hours,crm-9\n")

    assert read_csv(lines) == [
        Row(2, '{"provider":"ryng","account":"acme","call_id":"r-1"}'),
        Row(
            3,
            '{"provider":"plum","account":"acme","application_id":"7001","deployment_id":"3","when":"nightly",'
            '"reason":"quiet hours","request_id":"crm-9"}',
        ),
    ]


def test_columns_may_be_a_subset_in_any_order_and_cells_may_be_quoted() -> None:
    lines = csv_bytes('call_id,account,provider,reason\nr-1,acme,ryng,"late, and ""soon"""\r\nr-2,acme,ryng')

    assert read_csv(lines) == [
        Row(2, '{"call_id":"r-1","account":"acme","provider":"ryng","reason":"late, and \\"soon\\""}'),
        Row(3, '{"call_id":"r-2","account":"acme","provider":"ryng"}'),
    ]


def test_an_unterminated_quote_is_an_error_on_its_row_and_never_swallows_the_next() -> None:
    # Read loosely, row 3 became the end of row 2's reason, and the file seemed to hold one valid row.
    lines = csv_bytes('provider,account,call_id,reason\nryng,acme,r-1,"late\nryng,acme,r-2,\nryng,acme,r-3,ok\n')

    with pytest.raises(InvalidCsv) as error:
        read_csv(lines)

    assert [line.split(":")[0] for line in error.value.errors] == ["row 2"]
    assert "a quoted cell must close on its own line" in error.value.errors[0]


@pytest.mark.parametrize(
    "row",
    [
        'ryng,acme,r-1,"two\nlines"',  # a quoted line break: each line is a record, so the quote is left open
        'ryng,acme,r-1,"two\r\nlines"',
        'ryng,acme,r-1,"a carriage\rreturn"',
        'ryng,acme,r-1,"closed"then more',
    ],
)
def test_no_cell_holds_a_line_break_and_every_line_is_one_record(row: str) -> None:
    text = f"provider,account,call_id,reason\n{row}\nryng,acme,r-9,\n"
    last = text.count("\n")  # the row number of the good line at the end

    with pytest.raises(InvalidCsv) as error:
        read_csv(csv_bytes(text))

    assert error.value.errors[0].startswith("row 2: "), error.value.errors
    assert not [line for line in error.value.errors if line.startswith(f"row {last}:")], "the last line is its own row"


def test_rows_are_the_lines_of_the_file_however_they_end() -> None:
    text = "provider,account,call_id\r\nryng,acme,r-1\n\nryng,acme,r-2\r\nryng,acme,r-3"

    assert [row.number for row in read_csv(csv_bytes(text))] == [2, 4, 5]


def test_text_that_is_not_utf_8_and_overlong_lines_are_named_by_row() -> None:
    data = io.BytesIO(
        b"provider,account,call_id,reason\nryng,acme,r-1,caf\xe9\n"
        + b"ryng,acme,r-2,"
        + b"x" * (producer.MAX_LINE_BYTES + 10)
        + b"\nryng,acme,r-3,\n"
    )

    with pytest.raises(InvalidCsv) as error:
        read_csv(data)

    assert error.value.errors == [
        "row 2: not UTF-8 text: save the file as CSV UTF-8",
        f"row 3: longer than {producer.MAX_LINE_BYTES} bytes",
    ]


def test_every_bad_row_is_named_with_its_field_as_a_spreadsheet_numbers_it() -> None:
    # Row 4 is blank (skipped, still counted); row 7 is "ryng,acme" with a cell too many.
    lines = csv_bytes(
        f"{HEADER}\nryng,acme,r-1,,,,,\nryng,acme,,,,,,\n\nplum,ACME,,1,2,,,\nryng,acme,r-2,,,later,,\n"
        "ryng,acme,r-3,,,,,,extra\n,,,,,,,\nplum,acme,,7001,,,,\n"
    )

    with pytest.raises(InvalidCsv) as error:
        read_csv(lines)

    assert error.value.errors == [
        "row 3: call_id: Field required",
        "row 5: account: String should match pattern '^[a-z0-9][a-z0-9-]{0,62}$'",
        "row 6: when: Input should be 'now' or 'nightly'",
        "row 7: 9 cells, but the header names 8 columns",
        "row 9: deployment_id: Field required",
    ]


def test_a_field_the_provider_does_not_take_is_an_error() -> None:
    with pytest.raises(InvalidCsv, match="row 2: call_id: unknown field"):
        read_csv(csv_bytes(f"{HEADER}\nplum,acme,r-1,7001,3,,,\n"))


def test_the_header_must_name_known_columns_once() -> None:
    with pytest.raises(InvalidCsv, match=r"row 1: unknown column\(s\) callid; the columns are provider,account"):
        read_csv(csv_bytes("provider,account,callid\nryng,acme,r-1\n"))
    with pytest.raises(InvalidCsv, match=r"row 1: column\(s\) account given twice"):
        read_csv(csv_bytes("provider,account,call_id,account\nryng,acme,r-1,acme\n"))
    with pytest.raises(InvalidCsv, match="row 1: no header"):
        read_csv(csv_bytes(""))


def test_many_errors_are_capped_in_the_message_but_all_kept() -> None:
    lines = csv_bytes(HEADER + "\n" + "ryng,acme,,,,,,\n" * 50)

    with pytest.raises(InvalidCsv) as error:
        read_csv(lines)

    assert len(error.value.errors) == error.value.count == 50
    assert str(error.value).splitlines()[-2:] == ["row 21: call_id: Field required", "... and 30 more"]


def test_a_huge_file_of_bad_rows_keeps_a_bounded_list_and_the_full_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer, "MAX_ERRORS_KEPT", 30)

    with pytest.raises(InvalidCsv) as error:
        read_csv(csv_bytes(HEADER + "\n" + "ryng,acme,,,,,,\n" * 50))

    assert (len(error.value.errors), error.value.count) == (30, 50)
    assert str(error.value).splitlines()[-1] == "... and 30 more"


def test_a_file_from_a_spreadsheet_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = tmp_path / "cancels.csv"
    path.write_bytes(b"\xef\xbb\xbfprovider,account,call_id\r\nryng,acme,r-1\r\n")

    csv_file = CsvFile(path)
    assert csv_file.check() == 1
    assert list(csv_file.read()) == [Row(2, '{"provider":"ryng","account":"acme","call_id":"r-1"}')]
    assert csv_file.changed is None
    with pytest.raises(InvalidCsv, match="cannot read"):
        CsvFile(tmp_path / "missing.csv").check()


def test_a_file_is_checked_and_read_in_memory_that_does_not_grow_with_it(tmp_path: Path) -> None:
    path = tmp_path / "cancels.csv"
    with path.open("w") as out:
        out.write(HEADER + "\n")
        # The same request each time: pydantic's JSON string cache (up to about 1 MB) stays small.
        out.writelines("ryng,acme,r-1,,,,quiet hours,crm-1:cancel\n" for _ in range(5_000))
    csv_file = CsvFile(path)

    tracemalloc.start()
    try:
        rows = csv_file.check()
        last = max(row.number for row in csv_file.read())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (rows, last) == (5_000, 5_001)
    assert peak < 256 * 1024, f"{peak} bytes: the file was held, not streamed (its rows as a list: about 1 MB)"


def test_a_file_changed_between_the_check_and_the_send_sends_nothing_or_stops(tmp_path: Path) -> None:
    path = tmp_path / "cancels.csv"
    path.write_text("provider,account,call_id\nryng,acme,r-1\nryng,acme,r-2\n")
    csv_file = CsvFile(path)
    csv_file.check()

    path.write_text("provider,account,call_id\nryng,acme,r-1\nryng,acme,r-22\n")  # another size: caught at once
    with pytest.raises(InvalidCsv, match="changed after it was checked"):
        next(csv_file.read())

    csv_file.check()
    checked = path.stat()
    path.write_text("provider,account,call_id\nryng,acme,r-1\nryng,ACME,r-22\n")
    os.utime(path, ns=(checked.st_atime_ns, checked.st_mtime_ns))  # same size and time: met while sending
    assert [row.number for row in csv_file.read()] == [2], "it stops at the row that changed"
    assert csv_file.changed == f"{path} changed while it was sent: row 3: account: String should match pattern " + (
        "'^[a-z0-9][a-z0-9-]{0,62}$'"
    )


# ---- one request --------------------------------------------------------------------------------


def test_publish_refuses_an_invalid_request_before_any_aws_call(sqs: Any) -> None:
    with Stubber(sqs) as stubber:  # no answers stubbed: any AWS call would raise
        with pytest.raises(InvalidRequest, match="provider: must be 'ryng' or 'plum'"):
            publish({"provider": "twilio", "account": "acme"}, sqs=sqs)
        with pytest.raises(InvalidRequest, match="priority: unknown field"):
            publish(provider="ryng", account="acme", call_id="1", priority="high", sqs=sqs)
        stubber.assert_no_pending_responses()


def test_publish_sends_the_validated_body_and_returns_the_message_id(sqs: Any) -> None:
    with Stubber(sqs) as stubber:
        stubber.add_response(
            "send_message",
            {"MessageId": "m-1"},
            {"QueueUrl": QUEUE_URL, "MessageBody": '{"provider":"ryng","account":"acme","call_id":7,"when":"nightly"}'},
        )
        assert publish({"provider": "ryng", "account": "acme"}, call_id=7, when="nightly", queue_url=QUEUE_URL, sqs=sqs)
        stubber.assert_no_pending_responses()


def test_empty_and_none_fields_are_absent() -> None:
    assert encode({"provider": "ryng", "account": "acme", "call_id": "1", "reason": "", "request_id": None}) == (
        '{"provider":"ryng","account":"acme","call_id":"1"}'
    )


# ---- where the queues are -----------------------------------------------------------------------


def stack_outputs(stack: str, region: str = "us-east-1") -> Any:
    """A stubbed CloudFormation client that knows one stack."""
    cloudformation = boto3.client(
        "cloudformation", region_name=region, aws_access_key_id="x", aws_secret_access_key="x"
    )
    stubber = Stubber(cloudformation)
    stubber.add_response(
        "describe_stacks",
        {
            "Stacks": [
                {
                    "StackName": stack,
                    "CreationTime": "2026-11-24T00:00:00Z",
                    "StackStatus": "CREATE_COMPLETE",
                    "Outputs": [
                        {"OutputKey": "CancelQueueUrl", "OutputValue": f"https://{stack}/queue"},
                        {"OutputKey": "DeadLetterQueueUrl", "OutputValue": f"https://{stack}/dlq"},
                    ],
                }
            ]
        },
        {"StackName": stack},
    )
    stubber.activate()
    return cloudformation


def test_a_flag_beats_the_environment_which_beats_the_stack() -> None:
    env = {"CALLCANCEL_QUEUE_URL": "https://env/queue", "CALLCANCEL_DLQ_URL": "https://env/dlq"}
    cloudformation = stack_outputs("callcancel-prod")

    assert QueueLocator(queue_url="https://flag/queue", environ=env).cancel_queue() == "https://flag/queue"
    located = QueueLocator(stack_name="callcancel-prod", environ=env, cloudformation=cloudformation)
    assert (located.cancel_queue(), located.dead_letter_queue()) == ("https://env/queue", "https://env/dlq")
    located = QueueLocator(stack_name="callcancel-prod", environ={}, cloudformation=cloudformation)
    assert (located.cancel_queue(), located.dead_letter_queue()) == (
        "https://callcancel-prod/queue",
        "https://callcancel-prod/dlq",
    ), "one DescribeStacks for both"


def test_the_default_stack_and_region_come_from_samconfig_per_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read_samconfig(REPO / "samconfig.toml") == SamConfig("callcancel-dev", "us-east-1")
    assert read_samconfig(REPO / "samconfig.toml", "prod") == SamConfig("callcancel-prod", "us-east-1")
    assert read_samconfig(REPO / "no-such.toml") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samconfig.toml").write_text(
        'version = 0.1\n[default.global.parameters]\nstack_name = "cc-dev"\n'
        '[prod.global.parameters]\nstack_name = "cc-prod"\nregion = "eu-west-1"\n'
    )

    locator = QueueLocator(config_env="prod", environ={}, cloudformation=stack_outputs("cc-prod"))

    assert locator.dead_letter_queue() == "https://cc-prod/dlq"
    assert (locator.stack_name, locator.region) == ("cc-prod", "eu-west-1")
    assert QueueLocator(environ={}, cloudformation=stack_outputs("cc-dev")).cancel_queue() == "https://cc-dev/queue"


def test_no_queue_anywhere_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(LocateError, match="no queue: pass --queue-url, set CALLCANCEL_QUEUE_URL, or pass --stack-name"):
        QueueLocator(environ={}).cancel_queue()


def test_a_stack_without_the_output_is_named() -> None:
    cloudformation = boto3.client(
        "cloudformation", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(cloudformation) as stubber:
        stubber.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {"StackName": "other", "CreationTime": "2026-11-24T00:00:00Z", "StackStatus": "CREATE_COMPLETE"}
                ]
            },
        )
        stubber.add_client_error("describe_stacks", "ValidationError", "Stack with id gone does not exist")
        with pytest.raises(LocateError, match="stack other has no output CancelQueueUrl"):
            QueueLocator(stack_name="other", environ={}, cloudformation=cloudformation).cancel_queue()
        with pytest.raises(LocateError, match="no stack gone in us-east-1"):
            QueueLocator(stack_name="gone", environ={}, cloudformation=cloudformation).cancel_queue()


# ---- sending in bulk ----------------------------------------------------------------------------


def batch(rows: range) -> list[dict[str, str]]:
    return [{"Id": str(n), "MessageBody": f'{{"n":{n}}}'} for n in rows]


def sent(*rows: int) -> list[dict[str, str]]:
    return [{"Id": str(n), "MessageId": f"m{n}", "MD5OfMessageBody": "x"} for n in rows]


def test_entries_sqs_refuses_are_sent_again_and_those_it_keeps_refusing_are_reported(
    sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(producer.time, "sleep", lambda _: None)
    rows = [Row(n, f'{{"n":{n}}}') for n in range(2, 14)]  # rows 2..13: a batch of 10, then one of 2
    refused = {"Code": "InternalError", "SenderFault": False}
    with Stubber(sqs) as stubber:
        stubber.add_response(
            "send_message_batch",
            {
                "Successful": [{"Id": str(n), "MessageId": f"m{n}", "MD5OfMessageBody": "x"} for n in range(2, 9)],
                "Failed": [
                    {"Id": "9", **refused},
                    {"Id": "10", **refused},
                    {"Id": "11", "Code": "InvalidMessageContents", "SenderFault": True},
                ],
            },
            {"QueueUrl": QUEUE_URL, "Entries": batch(range(2, 12))},
        )
        stubber.add_response(
            "send_message_batch",
            {
                "Successful": [{"Id": "9", "MessageId": "m9", "MD5OfMessageBody": "x"}],
                "Failed": [{"Id": "10", **refused}],
            },
            {"QueueUrl": QUEUE_URL, "Entries": batch(range(9, 11))},
        )
        for _ in range(2):
            stubber.add_response(
                "send_message_batch",
                {"Successful": [], "Failed": [{"Id": "10", **refused}]},
                {"QueueUrl": QUEUE_URL, "Entries": batch(range(10, 11))},
            )
        stubber.add_response(
            "send_message_batch",
            {
                "Successful": [{"Id": str(n), "MessageId": f"m{n}", "MD5OfMessageBody": "x"} for n in (12, 13)],
                "Failed": [],
            },
            {"QueueUrl": QUEUE_URL, "Entries": batch(range(12, 14))},
        )

        report = BatchSender(sqs, QUEUE_URL, in_flight=1).send(rows)
        stubber.assert_no_pending_responses()

    assert report.sent == 10
    assert report.failed == {10: "InternalError", 11: "InvalidMessageContents"}


def test_a_refused_call_fails_its_rows_and_the_others_still_go(sqs: Any) -> None:
    rows = [Row(n, f'{{"n":{n}}}') for n in range(2, 14)]
    with Stubber(sqs) as stubber:
        stubber.add_client_error("send_message_batch", "AWS.SimpleQueueService.NonExistentQueue", "gone")
        stubber.add_response(
            "send_message_batch",
            {
                "Successful": [{"Id": str(n), "MessageId": f"m{n}", "MD5OfMessageBody": "x"} for n in (12, 13)],
                "Failed": [],
            },
        )

        report = BatchSender(sqs, QUEUE_URL, in_flight=1).send(rows)

    assert report.sent == 2
    assert report.failed == dict.fromkeys(range(2, 12), "AWS.SimpleQueueService.NonExistentQueue")


class SlowSqs:
    """Answers after a moment, as SQS does, and remembers what it took."""

    def __init__(self) -> None:
        self.taken: list[int] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        time.sleep(0.01)
        self.taken += [int(entry["Id"]) for entry in Entries]
        return {"Successful": [{"Id": entry["Id"]} for entry in Entries], "Failed": []}


def test_on_ctrl_c_the_calls_in_flight_finish_no_other_starts_and_it_says_where_it_stopped() -> None:
    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    sqs = SlowSqs()
    rows = [Row(n, f'{{"n":{n}}}') for n in range(2, 502)]  # 50 calls

    report = BatchSender(sqs, QUEUE_URL, in_flight=2).send(iter(rows), on_progress=interrupt)  # type: ignore[arg-type]

    assert report.interrupted
    assert 10 <= report.sent == len(sqs.taken) < 100
    assert report.failures == 0
    assert report.not_sent_from is not None
    assert set(range(2, 502)) - set(sqs.taken) == set(range(report.not_sent_from, 502)), "a resumable cut"


def test_rows_are_read_as_they_are_sent_a_few_calls_ahead() -> None:
    sqs = SlowSqs()
    read, ahead = 0, []

    def rows() -> Iterator[Row]:
        nonlocal read
        for n in range(2, 1002):
            read += 1
            ahead.append(read - len(sqs.taken))
            yield Row(n, f'{{"n":{n}}}')

    report = BatchSender(sqs, QUEUE_URL, in_flight=2).send(rows())  # type: ignore[arg-type]

    assert report.sent == 1000
    assert sorted(sqs.taken) == list(range(2, 1002))
    assert max(ahead) <= (2 * 2 + 1) * 10, "held rows are bounded by the calls in flight, not the file"


def test_many_refused_rows_keep_a_bounded_list_and_the_full_count(monkeypatch: pytest.MonkeyPatch) -> None:
    class RefusingSqs:
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
            return {
                "Successful": [],
                "Failed": [{"Id": e["Id"], "Code": "TooBig", "SenderFault": True} for e in Entries],
            }

    monkeypatch.setattr(producer, "MAX_FAILED_KEPT", 25)

    report = BatchSender(RefusingSqs(), QUEUE_URL).send(Row(n, "{}") for n in range(2, 102))  # type: ignore[arg-type]

    assert (report.sent, report.failures, len(report.failed)) == (0, 100, 25)
