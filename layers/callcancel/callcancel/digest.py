"""The DLQ alert digest: what a person needs, in one SNS message, to go from the alarm to fixed.

It is built from dead letters read without consuming them (`callcancel.queues.peek`), and says: how many,
which failure classes, which provider accounts, the commonest provider answers, and the exact commands.
It never holds a request body or a credential: provider messages are the only free text from outside,
and anything in them that looks like a token is masked.
"""

import functools
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3

from callcancel.dead_letter import UNCLASSIFIED, StoredDeadLetter, distinct
from callcancel.errors import FailureClass
from callcancel.observability import logger
from callcancel.peek import peek
from callcancel.redaction import redact
from callcancel.settings import DigestSettings

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

SUBJECT_MAX = 99  # SNS takes fewer than 100 characters
TOP_MESSAGES = 5


@dataclass(frozen=True)
class Runbook:
    meaning: str
    action: str
    redrive: bool  # does sending it again make sense once the cause is fixed?


# One line per class, in the order a person should look at them. The README's runbook says the same, at length.
RUNBOOK: dict[str, Runbook] = {
    FailureClass.CONFIG: Runbook(
        "the account's secret is missing or malformed", "create or fix the secret named in the reason", True
    ),
    FailureClass.AUTH: Runbook(
        "the provider refused the credentials, even after a fresh read", "rotate the token or key in the secret", True
    ),
    FailureClass.EXHAUSTED: Runbook(
        "the provider kept failing (5xx, 429, timeouts) on every attempt", "check the provider's status", True
    ),
    UNCLASSIFIED: Runbook(
        "moved by the queue's redrive policy: the worker crashed or timed out", "check the worker's errors", True
    ),
    FailureClass.REJECTED: Runbook(
        "the provider refused the request (4xx)", "read the provider message; redrive only if it was transient", True
    ),
    FailureClass.NOT_FOUND: Runbook(
        "the call or deployment does not exist (ended, or a wrong ID)", "nothing to cancel: tell the producer", False
    ),
    FailureClass.INVALID: Runbook(
        "the message breaks the cancel-request schema", "fix the producer; the message will never be valid", False
    ),
}

# The worker already took the exact secrets out of what it dead-lettered; this masks what is token-like,
# with the same rule, for letters from older workers and for tokens the worker did not know.
_masked = redact


@dataclass(frozen=True)
class AlarmChange:
    name: str
    state: str
    reason: str
    at: str

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> "AlarmChange":
        """From an EventBridge "CloudWatch Alarm State Change" event."""
        detail = event.get("detail") or {}
        state = detail.get("state") or {}
        return cls(
            name=str(detail.get("alarmName", "?")),
            state=str(state.get("value", "?")),
            reason=str(state.get("reason", "")),
            at=str(state.get("timestamp") or event.get("time", "")),
        )


@dataclass(frozen=True)
class Digest:
    visible: int  # messages on the DLQ when it was read
    subject: str
    text: str


def _ago(age: timedelta | None) -> str:
    if age is None:
        return "?"
    minutes = int(age.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h" if minutes < 48 * 60 else f"{minutes // 1440} d"


def _provider_line(letter: StoredDeadLetter) -> str | None:
    if not letter.provider_message:
        return None
    status = f" HTTP {letter.http_status}" if letter.http_status else ""
    return f"{letter.provider}{status}: {_masked(letter.provider_message)}"


def build_digest(
    letters: list[StoredDeadLetter],
    *,
    visible: int,
    stack_name: str,
    region: str,
    alarm: AlarmChange | None = None,
    now: datetime | None = None,
) -> Digest:
    """The digest of `letters` (a sample of the `visible` messages on the DLQ)."""
    now = now or datetime.now(UTC)
    classes = Counter(letter.failure_class for letter in letters)
    accounts = Counter(f"{letter.provider}/{letter.account}" for letter in letters)
    messages = Counter(line for letter in letters if (line := _provider_line(letter)))
    reasons = Counter(f"{letter.failure_class}: {_masked(letter.failure_reason)}" for letter in letters)
    ages = [age for letter in letters if (age := letter.age(now)) is not None]
    cli = f"callcancel dlq {{}} --stack-name {stack_name} --region {region}"

    lines = [f"{visible} dead letter(s) on the DLQ of stack {stack_name} ({region})."]
    if alarm:
        lines.append(f"Alarm {alarm.name} is {alarm.state} since {alarm.at}.")
    sampled = f"{len(letters)} read" + (f" (of {visible})" if len(letters) < visible else "")
    lines.append(
        f"{sampled}; oldest failed {_ago(max(ages, default=None))} ago, newest {_ago(min(ages, default=None))} ago."
    )

    lines += ["", "By failure class:"]
    ordered = sorted(classes, key=lambda name: list(RUNBOOK).index(name) if name in RUNBOOK else len(RUNBOOK))
    for name in ordered:
        book = RUNBOOK.get(name)
        lines.append(f"  {name:<12} {classes[name]:>5}  {book.meaning + '; ' + book.action if book else ''}")
    lines += ["", "By provider/account:"]
    lines += [f"  {account:<30} {count:>5}" for account, count in accounts.most_common(10)]
    if messages:
        lines += ["", "Most common provider answers:"]
        lines += [f"  {count:>5} x {line}" for line, count in messages.most_common(TOP_MESSAGES)]
    lines += ["", "Most common reasons:"]
    lines += [f"  {count:>5} x {line}" for line, count in reasons.most_common(TOP_MESSAGES)]

    lines += ["", "Look closer:", f"  {cli.format('list')}"]
    redrivable = [name for name in ordered if name in RUNBOOK and RUNBOOK[name].redrive]
    if redrivable:
        lines += ["", "Once the cause is fixed, send them again:"]
        lines += [f"  {cli.format('redrive')} --class {name}" for name in redrivable]
    discardable = [name for name in ordered if name in RUNBOOK and not RUNBOOK[name].redrive]
    if discardable:
        lines += ["", "Not worth sending again; once the producer is told, clear them:"]
        lines += [f"  {cli.format('discard')} --class {name}" for name in discardable]

    subject = f"callcancel {stack_name}: {visible} dead letter(s), " + ", ".join(
        f"{classes[name]} {name}" for name in ordered
    )
    return Digest(
        visible=visible,
        subject=subject[: SUBJECT_MAX - 3] + "..." if len(subject) > SUBJECT_MAX else subject,
        text="\n".join(lines),
    )


class DigestSender:
    """Reads the DLQ (leaving every message there) and publishes the digest to the alert topic."""

    def __init__(
        self,
        sqs: "SQSClient",
        sns: "SNSClient",
        *,
        dlq_url: str,
        topic_arn: str,
        stack_name: str,
        region: str,
        limit: int,
    ) -> None:
        self._sqs = sqs
        self._sns = sns
        self._dlq_url = dlq_url
        self._topic_arn = topic_arn
        self._stack_name = stack_name
        self._region = region
        self._limit = limit

    def digest(self, alarm: AlarmChange | None = None) -> Digest:
        visible = int(
            self._sqs.get_queue_attributes(QueueUrl=self._dlq_url, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"
            ]["ApproximateNumberOfMessages"]
        )
        items = peek(self._sqs, self._dlq_url, self._limit)
        letters = distinct([StoredDeadLetter.from_peeked(item) for item in items])
        # Under the limit, every letter was read: count them. Else SQS's count, less the copies the sample held.
        visible = len(letters) if len(items) < self._limit else max(visible - (len(items) - len(letters)), len(letters))
        return build_digest(letters, visible=visible, stack_name=self._stack_name, region=self._region, alarm=alarm)

    def send(self, event: dict[str, Any]) -> dict[str, Any]:
        """Publish the digest for an alarm going to ALARM; other states, or an emptied DLQ, send nothing."""
        alarm = AlarmChange.from_event(event)
        if alarm.state != "ALARM":
            logger.info("no digest: the alarm is not in ALARM", extra={"alarm": alarm.name, "state": alarm.state})
            return {"sent": False, "reason": f"alarm state {alarm.state}"}
        digest = self.digest(alarm)
        if digest.visible == 0:
            logger.info("no digest: the DLQ is empty again", extra={"alarm": alarm.name})
            return {"sent": False, "reason": "the DLQ is empty"}
        message_id = self._sns.publish(TopicArn=self._topic_arn, Subject=digest.subject, Message=digest.text)[
            "MessageId"
        ]
        logger.info("digest sent", extra={"alarm": alarm.name, "subject": digest.subject})
        return {"sent": True, "message_id": message_id, "subject": digest.subject}


@functools.cache
def digest_for(settings: DigestSettings) -> DigestSender:
    """One sender per container (and per distinct configuration): clients are built once."""
    return DigestSender(
        boto3.client("sqs"),
        boto3.client("sns"),
        dlq_url=settings.dead_letter_queue_url,
        topic_arn=settings.alert_topic_arn,
        stack_name=settings.stack_name,
        region=settings.aws_region,
        limit=settings.digest_limit,
    )
