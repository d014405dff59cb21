"""The `callcancel` CLI end to end against moto server: publish one and in bulk, list, show, redrive, discard."""

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

import callcancel
from callcancel.dead_letter import DeadLetter
from callcancel.digest import DigestSender
from callcancel.errors import AuthDenied, CancelFailure, ConfigError, Exhausted, InvalidRequest, NotFound, Rejected
from callcancel.peek import peek
from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_tools import dlq
from callcancel_tools.cli import main

pytestmark = pytest.mark.integration


@dataclass
class Queues:
    sqs: Any
    queue_url: str
    dlq_url: str

    @property
    def flags(self) -> list[str]:
        return ["--queue-url", self.queue_url, "--dlq-url", self.dlq_url]

    def bodies(self, url: str) -> list[str]:
        return sorted(message["body"] for message in peek(self.sqs, url, limit=1000))

    def depth(self, url: str) -> int:
        return len(peek(self.sqs, url, limit=1000))

    def dead_letter(
        self, body: dict[str, Any] | str, failure: CancelFailure, attempts: int = 1, source: str | None = None
    ) -> str:
        """A dead letter as the worker writes it; its DLQ message id."""
        text = body if isinstance(body, str) else json.dumps(body)
        letter = DeadLetter(text, failure, attempts, source_message_id=source or f"src-{uuid.uuid4()}")
        return str(
            self.sqs.send_message(
                QueueUrl=self.dlq_url, MessageBody=text, MessageAttributes=letter.message_attributes()
            )["MessageId"]
        )


@pytest.fixture
def queues(embedded_aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Queues]:
    embedded_aws.reset()
    monkeypatch.chdir(tmp_path)  # no samconfig.toml here: every test says where the queues are
    monkeypatch.delenv("CALLCANCEL_QUEUE_URL", raising=False)
    monkeypatch.delenv("CALLCANCEL_DLQ_URL", raising=False)
    # moto's short poll is exact (one host): the last, empty receive of a redrive need not wait a second.
    monkeypatch.setattr(dlq, "RECEIVE_WAIT_SECONDS", 0)
    sqs = boto3.client("sqs")
    dlq_url = sqs.create_queue(QueueName="dead-letters")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName="cancel-requests",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "7"})},
    )["QueueUrl"]
    yield Queues(sqs, queue_url, dlq_url)


def ryng(call_id: str, account: str = "acme") -> dict[str, str]:
    return {"provider": "ryng", "account": account, "call_id": call_id}


# ---- publish ------------------------------------------------------------------------------------


def test_publish_ryng_prints_the_message_id_of_the_validated_body(
    queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["publish", "ryng", "--account", "acme", "--call-id", "8f3c2a", "--reason", "order 7", *queues.flags])

    [message] = peek(queues.sqs, queues.queue_url)
    assert status == 0
    assert capsys.readouterr().out.strip() == message["message_id"]
    assert message["body"] == '{"provider":"ryng","account":"acme","call_id":"8f3c2a","reason":"order 7"}'


def test_publish_plum_nightly_with_a_request_id(queues: Queues, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "publish",
            "plum",
            "--account",
            "acme",
            "--application-id",
            "7001",
            "--deployment-id",
            "3",
            "--when",
            "nightly",
            "--request-id",
            "crm-1:cancel",
            *queues.flags,
        ]
    )

    assert status == 0
    assert [json.loads(body) for body in queues.bodies(queues.queue_url)] == [
        {
            "provider": "plum",
            "account": "acme",
            "when": "nightly",
            "request_id": "crm-1:cancel",
            "application_id": "7001",
            "deployment_id": "3",
        }
    ]


def test_publish_refuses_an_invalid_request_and_sends_nothing(
    queues: Queues, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["publish", "ryng", "--account", "Acme!", "--call-id", "../admin", *queues.flags])

    err = capsys.readouterr().err
    assert status == 2
    assert "account: String should match pattern" in err
    assert "call_id: String should match pattern" in err
    assert "nothing sent" in err
    assert queues.depth(queues.queue_url) == 0


def test_the_python_api_is_the_same_path(queues: Queues) -> None:
    message_id = callcancel.publish(provider="ryng", account="acme", call_id=1003, queue_url=queues.queue_url)

    [message] = peek(queues.sqs, queues.queue_url)
    assert message == {"message_id": message_id, "body": '{"provider":"ryng","account":"acme","call_id":1003}'}
    with pytest.raises(InvalidRequest, match="deployment_id: Field required"):
        callcancel.publish({"provider": "plum", "account": "acme", "application_id": "1"}, queue_url=queues.queue_url)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("provider,account,call_id,application_id,deployment_id,when,reason,request_id\n" + "\n".join(rows))
    return path


def test_publish_csv_sends_every_row(queues: Queues, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [f"ryng,acme,r-{i},,,,,req-{i}" for i in range(20)] + [
        f"plum,acme,,7001,{i},nightly,quiet hours," for i in range(5)
    ]
    csv_file = write_csv(tmp_path / "cancels.csv", rows)

    status = main(["publish", "--csv", str(csv_file), *queues.flags])

    assert status == 0
    assert queues.bodies(queues.queue_url) == sorted(
        [f'{{"provider":"ryng","account":"acme","call_id":"r-{i}","request_id":"req-{i}"}}' for i in range(20)]
        + [
            f'{{"provider":"plum","account":"acme","application_id":"7001","deployment_id":"{i}",'
            '"when":"nightly","reason":"quiet hours"}'
            for i in range(5)
        ]
    )
    assert "sent 25, failed 0, of 25 rows" in capsys.readouterr().out


def test_publish_csv_with_one_bad_row_sends_nothing(
    queues: Queues, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [f"ryng,acme,r-{i},,,,," for i in range(10)]
    rows[6] = "plum,acme,,7001,,,,"  # row 8 of the file: no deployment_id
    csv_file = write_csv(tmp_path / "cancels.csv", rows)

    status = main(["publish", "--csv", str(csv_file), *queues.flags])

    err = capsys.readouterr().err
    assert status == 2
    assert "row 8: deployment_id: Field required" in err
    assert "1 invalid row(s); nothing sent" in err
    assert queues.depth(queues.queue_url) == 0


def test_the_queues_are_found_through_the_stack_outputs(queues: Queues, capsys: pytest.CaptureFixture[str]) -> None:
    template = {
        "Resources": {"Queue": {"Type": "AWS::SQS::Queue"}, "Dead": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"CancelQueueUrl": {"Value": {"Ref": "Queue"}}, "DeadLetterQueueUrl": {"Value": {"Ref": "Dead"}}},
    }
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(StackName="callcancel-test", TemplateBody=json.dumps(template))
    [stack] = cloudformation.describe_stacks(StackName="callcancel-test")["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    stacked = Queues(queues.sqs, outputs["CancelQueueUrl"], outputs["DeadLetterQueueUrl"])
    stacked.dead_letter(ryng("i-1", "initech"), ConfigError("secret callcancel/ryng/initech is missing"))
    stacked.dead_letter(ryng("g-1", "globex"), AuthDenied("ryng answered HTTP 403", http_status=403))

    published = main(["publish", "ryng", "--account", "acme", "--call-id", "c-1", "--stack-name", "callcancel-test"])
    redriven = main(["dlq", "redrive", "--class", "config", "--stack-name", "callcancel-test"])

    assert (published, redriven) == (0, 0)
    assert stacked.bodies(stacked.queue_url) == sorted(
        ['{"provider":"ryng","account":"acme","call_id":"c-1"}', json.dumps(ryng("i-1", "initech"))]
    )
    assert [m["failure_class"] for m in peek(queues.sqs, stacked.dlq_url)] == ["auth"]
    assert queues.depth(queues.queue_url) == queues.depth(queues.dlq_url) == 0, "the other queues are untouched"


def test_without_a_queue_the_error_says_what_to_pass(queues: Queues, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["dlq", "list"])

    assert status == 2
    assert "no queue: pass --dlq-url, set CALLCANCEL_DLQ_URL, or pass --stack-name" in capsys.readouterr().err


def test_an_unknown_stack_is_a_clear_error(queues: Queues, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["dlq", "list", "--stack-name", "no-such-stack"])

    assert status == 2
    assert capsys.readouterr().err == "error: no stack no-such-stack in us-east-1\n"


def test_what_aws_refuses_is_one_line_and_status_1(queues: Queues, capsys: pytest.CaptureFixture[str]) -> None:
    gone = queues.queue_url.rsplit("/", 1)[0] + "/no-such-queue"

    status = main(["publish", "ryng", "--account", "acme", "--call-id", "c-1", "--queue-url", gone])

    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("error: AWS refused SendMessage: AWS.SimpleQueueService.NonExistentQueue")
    assert len(err.splitlines()) == 1


# ---- the DLQ ------------------------------------------------------------------------------------


CRASHED_BODY = '{"provider": "ryng", "account": "acme", "call_id": '  # not JSON; moved by the redrive policy


@pytest.fixture
def letters(queues: Queues) -> dict[str, str]:
    """Six dead letters: five as the worker writes them, one as the queue's redrive policy moves it (no
    attributes). Their DLQ message ids by name."""
    return {
        "auth": queues.dead_letter(ryng("g-1", "globex"), AuthDenied("ryng answered HTTP 403", http_status=403)),
        "config": queues.dead_letter(ryng("i-1", "initech"), ConfigError("secret callcancel/ryng/initech is missing")),
        "config2": queues.dead_letter(ryng("i-2", "initech"), ConfigError("secret callcancel/ryng/initech is missing")),
        "exhausted": queues.dead_letter(
            {"provider": "plum", "account": "acme", "application_id": "7001", "deployment_id": "2"},
            Exhausted("gave up after 5 attempts", http_status=503, provider_message="Service Unavailable"),
            attempts=5,
            source="src-exhausted",
        ),
        "not_found": queues.dead_letter(ryng("r-9"), NotFound("ryng answered HTTP 500", http_status=500)),
        "crashed": str(queues.sqs.send_message(QueueUrl=queues.dlq_url, MessageBody=CRASHED_BODY)["MessageId"]),
    }


def table_rows(out: str) -> dict[str, list[str]]:
    """The listed rows, by message id (the last column): into a pipe, tab-separated lines under a header."""
    cells = [line.split("\t") for line in out.splitlines() if line.count("\t") == 7]
    assert cells[0] == ["class", "provider", "account", "target", "reason", "attempts", "age", "message id"]
    return {row[-1]: row[:-1] for row in cells[1:]}


def test_dlq_list_prints_one_row_per_letter(
    queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["dlq", "list", *queues.flags])

    out = capsys.readouterr().out
    rows = table_rows(out)
    assert status == 0
    assert rows[letters["exhausted"]][:6] == ["exhausted", "plum", "acme", "7001/2", "gave up after 5 attempts", "5"]
    assert rows[letters["auth"]][:6] == ["auth", "ryng", "globex", "g-1", "ryng answered HTTP 403", "1"]
    assert re.fullmatch(r"[0-9]{1,2}s", rows[letters["auth"]][6]), "seconds old, however loaded the machine"
    assert rows[letters["crashed"]][:4] == ["unclassified", "?", "?", "?"]
    assert rows[letters["crashed"]][5:] == ["-", "?"]
    assert len(rows) == 6
    assert "6 dead letter(s): 1 auth, 2 config, 1 exhausted, 1 not_found, 1 unclassified" in out
    assert queues.depth(queues.dlq_url) == 6, "listing consumes nothing"


def test_dlq_list_shows_reasons_as_they_are(queues: Queues, capsys: pytest.CaptureFixture[str]) -> None:
    # What providers answer ends up in the reason: nothing in it may be read as rich markup or emoji codes.
    reason = "ryng answered HTTP 400: [bold]Bad [/] request :smile:"
    message_id = queues.dead_letter(ryng("r-1"), Rejected(reason, http_status=400))

    assert main(["dlq", "list", *queues.flags]) == 0

    assert table_rows(capsys.readouterr().out)[message_id][:5] == ["rejected", "ryng", "acme", "r-1", reason]


def test_dlq_list_limit(queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "list", "--limit", "2", *queues.flags]) == 0

    out = capsys.readouterr().out
    assert len(table_rows(out)) == 2
    assert "2 dead letter(s) (the first 2: --limit shows more)" in out


def test_dlq_show_prints_every_attribute_and_the_body(
    queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["dlq", "show", letters["exhausted"], *queues.flags])

    out = capsys.readouterr().out
    assert status == 0
    assert out.splitlines()[:9] == [
        f"message_id:        {letters['exhausted']}",
        out.splitlines()[1],
        "failure_class:     exhausted",
        "failure_reason:    gave up after 5 attempts",
        "attempts:          5",
        "source_message_id: src-exhausted",
        out.splitlines()[6],
        "http_status:       503",
        "provider_message:  Service Unavailable",
    ]
    assert re.fullmatch(r"age: {15}[0-9]{1,2}s", out.splitlines()[1])  # seconds old, however loaded the machine
    assert out.splitlines()[6].startswith("failed_at:         20")
    assert out.split("body:\n")[1] == (
        '{\n  "provider": "plum",\n  "account": "acme",\n  "application_id": "7001",\n  "deployment_id": "2"\n}\n'
    )


def test_dlq_show_finds_a_letter_by_its_source_message_id_or_says_it_is_not_there(
    queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "show", "src-exhausted", *queues.flags]) == 0
    assert f"message_id:        {letters['exhausted']}" in capsys.readouterr().out

    assert main(["dlq", "show", letters["crashed"], *queues.flags]) == 0
    out = capsys.readouterr().out
    assert "failure_class:     unclassified (moved by the queue's redrive policy" in out
    assert out.endswith(f"body:\n{CRASHED_BODY}\n"), "a body that is not JSON is shown as it is"

    assert main(["dlq", "show", "no-such-id", *queues.flags]) == 1
    assert capsys.readouterr().err.startswith("error: no dead letter with id no-such-id on ")


def as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """A peeked message without its id: the body and every attribute."""
    return {k: v for k, v in message.items() if k != "message_id"}


def test_redrive_by_class_moves_only_that_class_byte_for_byte(
    queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    dead = {m["message_id"]: as_sent(m) for m in peek(queues.sqs, queues.dlq_url)}

    status = main(["dlq", "redrive", "--class", "config", *queues.flags])

    assert status == 0
    moved = sorted((as_sent(m) for m in peek(queues.sqs, queues.queue_url)), key=lambda m: m["body"])
    assert moved == [dead[letters["config"]], dead[letters["config2"]]], "bodies and attributes as they were"
    assert moved[0]["body"] == json.dumps(ryng("i-1", "initech"))
    left = {m["message_id"] for m in peek(queues.sqs, queues.dlq_url)}
    assert left == {letters[name] for name in ("auth", "exhausted", "not_found", "crashed")}
    out = capsys.readouterr().out
    assert "2 dead letter(s) moved to CancelQueue: 2 config" in out
    assert "left 4 dead letter(s) on the DLQ" in out


def test_redrive_of_all_moves_everything(
    queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    dead = sorted((as_sent(m) for m in peek(queues.sqs, queues.dlq_url)), key=lambda m: m["body"])

    status = main(["dlq", "redrive", *queues.flags])

    assert status == 0
    assert queues.depth(queues.dlq_url) == 0
    assert sorted((as_sent(m) for m in peek(queues.sqs, queues.queue_url)), key=lambda m: m["body"]) == dead
    # moto has no StartMessageMoveTask (HTTP 500): the CLI moved them one by one instead.
    out = capsys.readouterr().out
    assert "6 dead letter(s) moved to CancelQueue: 1 auth, 2 config, 1 exhausted, 1 not_found, 1 unclassified" in out
    assert "left 0 dead letter(s) on the DLQ" in out


def test_dry_runs_move_and_delete_nothing(
    queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "redrive", "--dry-run", *queues.flags]) == 0
    assert main(["dlq", "redrive", "--class", "auth", "--dry-run", *queues.flags]) == 0
    assert main(["dlq", "discard", "--all", "--dry-run", *queues.flags]) == 0

    assert capsys.readouterr().out.splitlines() == [
        "dry run: would move 6 dead letter(s): 1 auth, 2 config, 1 exhausted, 1 not_found, 1 unclassified",
        "would leave 0 dead letter(s) on the DLQ",
        "dry run: would move 1 dead letter(s): 1 auth",
        "would leave 5 dead letter(s) on the DLQ",
        "dry run: would delete 6 dead letter(s): 1 auth, 2 config, 1 exhausted, 1 not_found, 1 unclassified",
        "would leave 0 dead letter(s) on the DLQ",
    ]
    assert queues.depth(queues.dlq_url) == 6
    assert queues.depth(queues.queue_url) == 0


def test_discard_deletes_only_that_class(
    queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "discard", "--class", "not_found", *queues.flags]) == 0

    left = {m["message_id"] for m in peek(queues.sqs, queues.dlq_url)}
    assert left == {letters[name] for name in ("auth", "config", "config2", "exhausted", "crashed")}
    assert queues.depth(queues.queue_url) == 0
    assert capsys.readouterr().out == "1 dead letter(s) deleted: 1 not_found\nleft 5 dead letter(s) on the DLQ\n"


def test_discard_needs_a_class_or_all(queues: Queues, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dlq", "discard", *queues.flags])

    assert exit_.value.code == 2
    assert "one of the arguments --class --all is required" in capsys.readouterr().err


def test_an_unknown_class_is_refused_by_name(queues: Queues, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dlq", "redrive", "--class", "notfound", *queues.flags])

    assert exit_.value.code == 2
    assert "invalid choice: 'notfound'" in capsys.readouterr().err


def test_the_installed_entry_point_runs_against_the_same_queues(queues: Queues) -> None:
    command = Path(sys.executable).parent / "callcancel"
    result = subprocess.run(
        [str(command), "publish", "ryng", "--account", "acme", "--call-id", "e-1"],
        env={**os.environ, "CALLCANCEL_QUEUE_URL": queues.queue_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    [message] = peek(queues.sqs, queues.queue_url)
    assert result.stdout.strip() == message["message_id"]


def test_publish_csv_with_an_unterminated_quote_names_the_row_and_sends_nothing(
    queues: Queues, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The quote opened in row 2's reason never closes: read loosely, row 3 became part of that reason.
    csv_file = tmp_path / "cancels.csv"
    csv_file.write_text('provider,account,call_id,reason\nryng,acme,r-1,"late\nryng,acme,r-2,\n')

    status = main(["publish", "--csv", str(csv_file), *queues.flags])

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("row 2: ")
    assert "1 invalid row(s); nothing sent" in err
    assert queues.depth(queues.queue_url) == 0


# ---- a redrive ends, and moves each letter once -------------------------------------------------


class DeadLetteringWorker(threading.Thread):
    """Stands in for a worker whose cause is not fixed: every message on CancelQueue is dead-lettered again at
    once, as the worker does it (a new DLQ message, `source_message_id` = the CancelQueue message id)."""

    def __init__(self, queues: Queues, seconds: float) -> None:
        super().__init__(daemon=True)
        self.queues = queues
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.received: Counter[str] = Counter()  # bodies, as often as the worker got them

    def run(self) -> None:
        sqs = boto3.client("sqs")
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            for message in sqs.receive_message(QueueUrl=self.queues.queue_url, MaxNumberOfMessages=10).get(
                "Messages", []
            ):
                self.received[message["Body"]] += 1
                self.queues.dead_letter(
                    message["Body"], AuthDenied("ryng answered HTTP 403", http_status=403), source=message["MessageId"]
                )
                sqs.delete_message(QueueUrl=self.queues.queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_redrive_ends_and_moves_each_letter_once_while_the_worker_dead_letters_the_copies_again(
    queues: Queues, letters: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the fix, the sweep took each copy the worker dead-lettered for a new letter and sent it back,
    # for as long as the worker ran (3 auth letters went round about 494 times each in 60 s).
    more_auth = [queues.dead_letter(ryng(f"g-{i}", "globex"), AuthDenied("ryng answered HTTP 403")) for i in (2, 3)]
    worker = DeadLetteringWorker(queues, seconds=90)
    worker.start()
    status: list[int] = []
    redrive = threading.Thread(target=lambda: status.append(main(["dlq", "redrive", "--class", "auth", *queues.flags])))

    redrive.start()
    redrive.join(timeout=60)
    ended = not redrive.is_alive()
    deadline = time.monotonic() + 20
    while queues.depth(queues.queue_url) and time.monotonic() < deadline:  # the worker takes what was sent last
        time.sleep(0.1)
    worker.stop.set()
    worker.join()

    assert ended, "the redrive did not end"
    assert status == [0]
    assert worker.received == {json.dumps(ryng(f"g-{i}", "globex")): 1 for i in (1, 2, 3)}, "each letter moved once"
    out = capsys.readouterr().out
    assert "3 dead letter(s) moved to CancelQueue: 3 auth" in out
    on_dlq = peek(queues.sqs, queues.dlq_url, limit=1000)  # visible again at once, not after a hide timeout
    assert {m["message_id"] for m in on_dlq} >= {letters[n] for n in ("config", "config2", "exhausted", "not_found")}
    assert not {letters["auth"], *more_auth} & {m["message_id"] for m in on_dlq}, "the moved letters are gone"
    assert [m.get("failure_class") for m in on_dlq].count("auth") == 3, "the worker's new dead letters stay, visible"


def test_redrive_leaves_what_arrives_after_it_began(queues: Queues, monkeypatch: pytest.MonkeyPatch) -> None:
    old = queues.dead_letter(ryng("o-1"), AuthDenied("ryng answered HTTP 403"))
    started = dlq._start

    def start_then_a_new_letter_arrives(sqs: Any, url: str) -> tuple[int, int]:
        cutoff, depth = started(sqs, url)
        time.sleep(max(0.0, cutoff / 1000 - time.time()) + 0.05)  # past SQS's second of the start
        queues.dead_letter(ryng("n-1"), AuthDenied("ryng answered HTTP 403"))
        return cutoff, depth

    monkeypatch.setattr(dlq, "_start", start_then_a_new_letter_arrives)

    sweep = dlq.redrive(queues.sqs, queues.dlq_url, queues.queue_url, failure_class="auth")

    assert (sweep.done, sweep.newer, sweep.left) == (1, 1, 1)
    assert queues.bodies(queues.queue_url) == [json.dumps(ryng("o-1"))]
    assert old not in {m["message_id"] for m in peek(queues.sqs, queues.dlq_url)}
    assert queues.bodies(queues.dlq_url) == [json.dumps(ryng("n-1"))]


# ---- two copies of one dead letter (a worker killed between the dead-letter send and the ack) ----------


@pytest.fixture
def twice(queues: Queues) -> list[str]:
    body = ryng("d-1", "globex")
    failure = AuthDenied("ryng answered HTTP 403", http_status=403)
    return [queues.dead_letter(body, failure, source="src-twice") for _ in range(2)]


def test_list_and_the_digest_count_a_source_message_id_once(
    queues: Queues, twice: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "list", *queues.flags]) == 0

    out = capsys.readouterr().out
    assert len(table_rows(out)) == 1
    assert "1 dead letter(s): 1 auth" in out
    sender = DigestSender(
        queues.sqs,
        boto3.client("sns"),
        dlq_url=queues.dlq_url,
        topic_arn="arn:aws:sns:us-east-1:123456789012:unused",
        stack_name="callcancel-test",
        region="us-east-1",
        limit=100,
    )
    digest = sender.digest()
    assert digest.visible == 1
    assert digest.subject == "callcancel callcancel-test: 1 dead letter(s), 1 auth"


def test_redrive_moves_one_copy_and_deletes_the_other(
    queues: Queues, twice: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "redrive", "--class", "auth", "--dry-run", *queues.flags]) == 0
    assert main(["dlq", "redrive", "--class", "auth", *queues.flags]) == 0

    assert queues.bodies(queues.queue_url) == [json.dumps(ryng("d-1", "globex"))]
    assert queues.depth(queues.dlq_url) == 0
    assert capsys.readouterr().out.splitlines() == [
        "dry run: would move 1 dead letter(s): 1 auth",
        "would delete 1 second cop(ies) of those (same source_message_id)",
        "would leave 0 dead letter(s) on the DLQ",
        "1 dead letter(s) moved to CancelQueue: 1 auth",
        "deleted 1 second cop(ies) of those (same source_message_id)",
        "left 0 dead letter(s) on the DLQ",
    ]


def test_discard_deletes_both_copies(queues: Queues, twice: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "discard", "--class", "auth", *queues.flags]) == 0

    assert queues.depth(queues.dlq_url) == 0
    assert "1 dead letter(s) deleted: 1 auth" in capsys.readouterr().out
