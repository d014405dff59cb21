"""`callcancel`: publish cancel requests, tell what became of them, and read, redrive or discard dead letters.
Arguments and printing only.

Exit status: 0 done; 1 AWS refused or failed (or some messages could not be handled); 2 bad input, nothing sent;
3 `status` of a request with no outcome recorded.
"""

import argparse
import contextlib
import functools
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from callcancel.dead_letter import ATTRIBUTES, StoredDeadLetter
from callcancel.errors import InvalidRequest
from callcancel_tools import dlq
from callcancel_tools.locate import (
    DLQ_URL_ENV,
    EVENT_BUS_ENV,
    OUTCOME_TABLE_ENV,
    QUEUE_URL_ENV,
    LocateError,
    QueueLocator,
)
from callcancel_tools.outcome_record import OutcomeRecord, read_outcome
from callcancel_tools.producer import (
    CSV_COLUMNS,
    CsvFile,
    InvalidCsv,
    PublishRefused,
    capped,
    encode,
    publish,
    publish_rows,
)

UNKNOWN_REQUEST = 3


def _where() -> argparse.ArgumentParser:
    """Options every command takes. SUPPRESS: a subcommand's unset option must not hide the parent's value."""
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_argument_group("where the queues are (flag, else environment variable, else stack outputs)")
    group.add_argument("--stack-name", default=argparse.SUPPRESS, help="default: samconfig.toml's stack_name")
    group.add_argument("--config-env", default=argparse.SUPPRESS, help="samconfig.toml environment (default: default)")
    group.add_argument("--queue-url", default=argparse.SUPPRESS, help=f"CancelQueue URL (or ${QUEUE_URL_ENV})")
    group.add_argument("--dlq-url", default=argparse.SUPPRESS, help=f"DeadLetterQueue URL (or ${DLQ_URL_ENV})")
    group.add_argument("--region", default=argparse.SUPPRESS, help="default: samconfig.toml's, else boto3's")
    return where


def _via() -> argparse.ArgumentParser:
    via = argparse.ArgumentParser(add_help=False)
    group = via.add_argument_group("the way in")
    group.add_argument(
        "--via",
        choices=["sqs", "eventbridge"],
        default=argparse.SUPPRESS,
        help="sqs (default): SendMessage to CancelQueue; eventbridge: a Cancel Requested event on the stack's bus",
    )
    group.add_argument(
        "--event-bus", default=argparse.SUPPRESS, help=f"the bus, for --via eventbridge (or ${EVENT_BUS_ENV})"
    )
    return via


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--account", required=True, help="selects the credentials: {prefix}/{provider}/{account}")
    parser.add_argument("--when", choices=["now", "nightly"], help="nightly: hold it for the nightly purge")
    parser.add_argument("--reason", help="free text, at most 500 characters")
    parser.add_argument("--request-id", help="idempotency key: a second request with it makes no provider call")


def _publish_parsers(commands: Any, where: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False, parents=[where, _via()])
    publish = commands.add_parser("publish", parents=[where], help="publish cancel requests to CancelQueue")
    publish.add_argument(
        "--csv", type=Path, metavar="FILE", help="a request per row, under a header of fields: " + ",".join(CSV_COLUMNS)
    )
    providers = publish.add_subparsers(dest="provider", metavar="{ryng,plum}")
    ryng = providers.add_parser("ryng", parents=[where], help="cancel one Ryng call")
    _request_options(ryng)
    ryng.add_argument("--call-id", required=True)
    plum = providers.add_parser("plum", parents=[where], help="cancel every pending call of a Plum deployment")
    _request_options(plum)
    plum.add_argument("--application-id", required=True)
    plum.add_argument("--deployment-id", required=True)


def _dlq_parsers(commands: Any, where: argparse.ArgumentParser) -> None:
    dead = commands.add_parser("dlq", help="the dead-letter queue").add_subparsers(dest="action", required=True)
    listing = dead.add_parser("list", parents=[where], help="class, provider, account, target, reason, attempts, age")
    listing.add_argument("--limit", type=_positive, default=100, help="at most this many (default: 100)")
    show = dead.add_parser("show", parents=[where], help="one dead letter in full")
    show.add_argument("message_id", metavar="ID", help="DLQ message id (as `list` shows) or the original message id")
    redrive = dead.add_parser("redrive", parents=[where], help="send dead letters back to CancelQueue")
    redrive.add_argument("--class", dest="failure_class", choices=dlq.CLASSES, help="only this failure class")
    redrive.add_argument("--dry-run", action="store_true", help="count what would move; move nothing")
    discard = dead.add_parser("discard", parents=[where], help="delete dead letters that must not be sent again")
    which = discard.add_mutually_exclusive_group(required=True)
    which.add_argument("--class", dest="failure_class", choices=dlq.CLASSES, help="only this failure class")
    which.add_argument("--all", action="store_true", help="every dead letter")
    discard.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")


def _status_parser(commands: Any, where: argparse.ArgumentParser) -> None:
    status = commands.add_parser("status", parents=[where], help="what became of cancel requests")
    status.add_argument(
        "request_ids",
        nargs="+",
        metavar="REQUEST_ID",
        help="a request_id, or the SQS message id of a request without one",
    )
    status.add_argument("--json", action="store_true", help="one JSON object per line, the record's attributes")
    status.add_argument(
        "--outcome-table", default=argparse.SUPPRESS, help=f"the outcome table (or ${OUTCOME_TABLE_ENV})"
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="callcancel",
        description="Cancel pending outbound calls: publish, see what became of them, and operate the DLQ.",
    )
    commands = root.add_subparsers(dest="command", required=True)
    where = _where()
    _publish_parsers(commands, where)
    _dlq_parsers(commands, where)
    _status_parser(commands, where)
    return root


class Cli:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.locator = QueueLocator(
            queue_url=getattr(args, "queue_url", None),
            dlq_url=getattr(args, "dlq_url", None),
            stack_name=getattr(args, "stack_name", None),
            config_env=getattr(args, "config_env", "default"),
            region=getattr(args, "region", None),
            outcome_table_name=getattr(args, "outcome_table", None),
            event_bus_name=getattr(args, "event_bus", None),
        )
        # Into a pipe or a file, one line per table row (for grep), however long; a terminal wraps cells.
        # Cells hold producers' and providers' text: never read it as rich markup ("[/]") or emoji codes.
        plain: dict[str, Any] = {"highlight": False, "markup": False, "emoji": False}
        self.out = Console(width=None if sys.stdout.isatty() else 10_000, **plain)
        self.err = Console(stderr=True, **plain)

    @functools.cached_property
    def _session(self) -> boto3.Session:
        # Made once the queues are located: a stack found through samconfig.toml brings its region.
        return boto3.Session(region_name=self.locator.region)

    @functools.cached_property
    def sqs(self) -> Any:
        return self._session.client("sqs")

    def run(self) -> int:
        if self.args.command == "publish":
            return self.publish_csv() if self.args.csv else self.publish_one()
        if self.args.command == "status":
            return self.status()
        return int(getattr(self, f"dlq_{self.args.action}")())

    def publish_one(self) -> int:
        fields = {name: getattr(self.args, name, None) for name in CSV_COLUMNS}
        encode(fields)  # refused before any AWS call, the stack lookup included
        if getattr(self.args, "via", "sqs") == "eventbridge":
            event_bus = self.locator.event_bus()
            events = self._session.client("events")
            # The request_id (given, or made up): `callcancel status` takes it.
            print(publish(fields, via="eventbridge", event_bus=event_bus, events=events))
            return 0
        queue_url = self.locator.cancel_queue()
        print(publish(fields, queue_url=queue_url, sqs=self.sqs))
        return 0

    def publish_csv(self) -> int:
        csv_file = CsvFile(self.args.csv)
        total = csv_file.check()  # every row, before anything is sent
        queue_url = self.locator.cancel_queue()
        started = time.monotonic()
        with Progress(
            TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.err
        ) as progress:
            task = progress.add_task("publish", total=total)
            report = publish_rows(
                csv_file.read(), queue_url, sqs=self.sqs, on_progress=lambda n: progress.advance(task, n)
            )
        refused = [f"row {number}: not sent: {code}" for number, code in sorted(report.failed.items())]
        for line in capped(refused):
            print(line, file=sys.stderr)
        if report.failures > len(report.failed):
            print(f"... {report.failures} rows not sent in all", file=sys.stderr)
        seconds = time.monotonic() - started
        stopped = " (interrupted)" if report.interrupted else ""
        if report.not_sent_from is not None:
            stopped += f"; rows from {report.not_sent_from} on were not sent"
        print(f"sent {report.sent}, failed {report.failures}, of {total} rows in {seconds:.1f} s{stopped}")
        if csv_file.changed:
            print(f"error: {csv_file.changed}; no row after it was sent", file=sys.stderr)
            return 2
        return 130 if report.interrupted else 1 if report.failures else 0

    def status(self) -> int:
        table = self.locator.outcome_table()
        dynamodb = self._session.client("dynamodb")
        records: list[OutcomeRecord] = []
        unknown = []
        for request_id in dict.fromkeys(self.args.request_ids):
            record = read_outcome(dynamodb, table, request_id)
            if record is None:
                unknown.append(request_id)
            else:
                records.append(record)
        if self.args.json:
            for record in records:
                print(json.dumps(record.as_dict(), ensure_ascii=False))
        elif records:
            self.out.print(_status_table(records))
            for record in records:
                if record.outcome in dlq.CLASSES and record.message_id:
                    print(f"{record.id}: dead-lettered; why: callcancel dlq show {record.message_id}")
        for request_id in unknown:
            print(f"no outcome recorded for {request_id} (not processed yet, unknown, or expired)", file=sys.stderr)
        return UNKNOWN_REQUEST if unknown else 0

    def dlq_list(self) -> int:
        dlq_url = self.locator.dead_letter_queue()
        with self._progress("reading the DLQ") as on_progress:
            letters, read = dlq.list_letters(
                self.sqs, dlq_url, self.args.limit, lambda n: on_progress(n, self.args.limit)
            )
        now = datetime.now(UTC)
        columns = ("class", "provider", "account", "target", "reason", "attempts", "age", "message id")
        rows = [
            (
                letter.failure_class,
                letter.provider,
                letter.account,
                letter.target,
                letter.failure_reason,
                letter.attempts,
                _age(letter.age(now)),
                letter.message_id,
            )
            for letter in sorted(letters, key=lambda x: (x.failure_class, x.failed_at or now))
        ]
        if self.out.is_terminal:
            table = Table(*columns)
            for row in rows:
                table.add_row(*row)
            self.out.print(table)
        else:
            # Into a pipe or a file: one tab-separated line per letter, for grep and cut, and quick at 10,000
            # (a rich table takes seconds to lay out that many).
            for row in [columns, *rows]:
                print("\t".join(" ".join(cell.split()) for cell in row))
        counts = ", ".join(f"{n} {c}" for c, n in sorted(Counter(x.failure_class for x in letters).items()))
        limit = f" (the first {read}: --limit shows more)" if read == self.args.limit else ""
        print(f"{len(letters)} dead letter(s){limit}{': ' + counts if counts else ''}")
        return 0

    def dlq_show(self) -> int:
        dlq_url = self.locator.dead_letter_queue()
        item = dlq.find_letter(self.sqs, dlq_url, self.args.message_id)
        if item is None:
            print(f"error: no dead letter with id {self.args.message_id} on {dlq_url}", file=sys.stderr)
            return 1
        print(_describe(item))
        return 0

    def dlq_redrive(self) -> int:
        dlq_url, queue_url = self.locator.dead_letter_queue(), self.locator.cancel_queue()
        with self._progress("reading the DLQ") as on_progress:
            sweep = dlq.redrive(
                self.sqs,
                dlq_url,
                queue_url,
                failure_class=self.args.failure_class,
                dry_run=self.args.dry_run,
                on_progress=on_progress,
            )
        return self._report(sweep, "moved to CancelQueue", "would move")

    def dlq_discard(self) -> int:
        dlq_url = self.locator.dead_letter_queue()
        with self._progress("reading the DLQ") as on_progress:
            sweep = dlq.discard(
                self.sqs,
                dlq_url,
                failure_class=self.args.failure_class,
                dry_run=self.args.dry_run,
                on_progress=on_progress,
            )
        return self._report(sweep, "deleted", "would delete")

    @contextlib.contextmanager
    def _progress(self, what: str) -> Iterator[Callable[[int, int], None]]:
        """A progress bar on stderr, fed (done, total)."""
        with Progress(
            TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.err, transient=True
        ) as progress:
            task = progress.add_task(what, total=None)
            yield lambda done, total: progress.update(task, completed=done, total=max(done, total))

    def _report(self, sweep: dlq.Sweep, done: str, would: str) -> int:
        by_class = ", ".join(f"{n} {c}" for c, n in sorted(sweep.matched.items()))
        if sweep.dry_run:
            print(f"dry run: {would} {sweep.matched.total()} dead letter(s){': ' + by_class if by_class else ''}")
        else:
            print(f"{sweep.done} dead letter(s) {done}{': ' + by_class if by_class else ''}")
        if sweep.duplicates:
            verb = "would delete" if sweep.dry_run else "deleted"
            print(f"{verb} {sweep.duplicates} second cop(ies) of those (same source_message_id)")
        if sweep.newer:
            print(f"skipped {sweep.newer} dead letter(s) that arrived after it began")
        print(f"{'would leave' if sweep.dry_run else 'left'} {sweep.left} dead letter(s) on the DLQ")
        for line in capped([f"not handled: {message_id}: {why}" for message_id, why in sweep.failed.items()]):
            print(line, file=sys.stderr)
        return 1 if sweep.failed else 0


def _age(age: timedelta | None) -> str:
    if age is None:
        return "?"
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _status_table(records: list[OutcomeRecord]) -> Table:
    now = datetime.now(UTC)
    table = Table("request", "outcome", "provider", "account", "target", "attempts", "last answer", "updated")
    for record in records:
        status = f"HTTP {record.http_status}" if record.http_status else ""
        answer = " ".join(part for part in (status, record.provider_message or "") if part)
        updated = record.updated
        table.add_row(
            record.id,
            record.outcome,
            record.provider or "?",
            record.account or "?",
            record.target or "?",
            str(record.attempts),
            answer or "-",
            f"{record.updated_at} ({_age(now - updated)} ago)" if updated else record.updated_at,
        )
    return table


def _attribute_order(name: str) -> tuple[int, str]:
    # The contract's attributes first, in its order; any others after them.
    return (ATTRIBUTES.index(name) if name in ATTRIBUTES else len(ATTRIBUTES), name)


def _describe(item: dict[str, Any]) -> str:
    """Every attribute as SQS holds it, then the body (pretty when it is JSON)."""
    letter = StoredDeadLetter.from_peeked(item)
    try:
        body = json.dumps(json.loads(letter.body), indent=2, ensure_ascii=False)
    except ValueError:
        body = letter.body
    attributes = {k: item[k] for k in sorted(item, key=_attribute_order) if k not in ("message_id", "body")}
    if "failure_class" not in attributes:
        attributes["failure_class"] = f"{letter.failure_class} ({letter.failure_reason})"
    lines = [f"{'message_id:':<19}{letter.message_id}", f"{'age:':<19}{_age(letter.age())}"]
    lines += [f"{name + ':':<19}{value}" for name, value in attributes.items()]
    return "\n".join([*lines, "body:", body])


def _aws_error(exc: ClientError) -> str:
    # Code and message only, on one line: never the raw response (an emulator may answer with a whole HTML page).
    error = exc.response.get("Error", {})
    message = " ".join(str(error.get("Message", "")).split())
    return f"error: AWS refused {exc.operation_name}: {error.get('Code', '?')}: {message[:200]}"


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.command != "publish":
        return None
    if bool(args.csv) == bool(args.provider):
        return "publish takes either a provider (ryng, plum) or --csv FILE"
    if args.csv and getattr(args, "via", "sqs") == "eventbridge":
        return "publish --csv sends to CancelQueue only (--via sqs)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    usage = _usage_error(args)
    if usage:
        print(f"error: {usage}", file=sys.stderr)
        return 2
    try:
        return Cli(args).run()
    except InvalidCsv as exc:
        print(f"{exc}\nerror: {exc.count} invalid row(s); nothing sent", file=sys.stderr)
    except InvalidRequest as exc:
        print(f"error: {exc}; nothing sent", file=sys.stderr)
    except LocateError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ClientError as exc:
        print(_aws_error(exc), file=sys.stderr)
        return 1
    except (BotoCoreError, PublishRefused) as exc:  # no credentials, no connection, an event refused, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a redrive or discard has made what it held visible again
        print("error: interrupted", file=sys.stderr)
        return 130
    return 2
