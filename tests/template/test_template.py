"""template.yaml and samconfig.toml hold the design's rules: runtime, queues, least-privilege IAM, contract env.

The static checks read the template with cfn-lint's loader, so intrinsics parse as {"Ref": ...} and
{"Fn::GetAtt": [...]}. What SAM generates from a function's events (rules, EventInvokeConfig) is checked on
the template the SAM translator makes of it. The last two tests run `sam validate --lint` and `sam build` for real.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode.cfn_yaml import load
from moto.events.models import EventPattern
from samtranslator.translator.transform import transform  # type: ignore[import-untyped]
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

from callcancel.outcomes import CANCEL_FAILED, DETAIL_TYPES, EVENT_FAILED_METRIC, EVENT_SOURCE, RECORD_FAILED_METRIC

pytestmark = [pytest.mark.template, pytest.mark.xdist_group("sam")]

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"
SAMCONFIG = REPO_ROOT / "samconfig.toml"

CONTRACT_ENV = {
    "CANCEL_QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL",
    "IDEMPOTENCY_TABLE",
    "DEFERRED_TABLE",
    "SECRET_PREFIX",
    "MAX_ATTEMPTS",
    "RETRY_BASE_SECONDS",
    "RETRY_MAX_SECONDS",
    "RYNG_BASE_URL",
    "PLUM_BASE_URL",
    "PROVIDER_TIMEOUT_SECONDS",
    "MAX_IN_FLIGHT",
    "OUTCOME_TABLE",
    "OUTCOME_RETENTION_DAYS",
    "EVENT_BUS_NAME",
}
FOURTEEN_DAYS = 14 * 24 * 3600


# ---- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load(str(TEMPLATE))


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


class _NoManagedPolicies:
    """Every role in the template is explicit: the translator needs no managed policy names."""

    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    """Resources as CloudFormation gets them from the SAM translator (code URIs stand in for `sam package`)."""
    document = yaml_parse(TEMPLATE.read_text())
    for name, resource in document["Resources"].items():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = f"s3://artifacts/{name}.zip"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the translator builds ARNs in a region
        resources: dict[str, Any] = transform(document, {}, _NoManagedPolicies())["Resources"]
    return resources


def props(resources: dict[str, Any], name: str) -> dict[str, Any]:
    return resources[name]["Properties"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def arn_of(name: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [name, "Arn"]}


@pytest.fixture(scope="module")
def worker_statements(resources: dict[str, Any]) -> list[dict[str, Any]]:
    role = props(resources, "CancelWorkerRole")
    return [statement for policy in role["Policies"] for statement in policy["PolicyDocument"]["Statement"]]


def statements_with(statements: list[dict[str, Any]], action_prefix: str) -> list[dict[str, Any]]:
    return [s for s in statements if any(a.startswith(action_prefix) for a in as_list(s["Action"]))]


# ---- runtime and layer --------------------------------------------------------------------------


def test_functions_run_python313_on_arm64(template: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]

    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["arm64"]
    assert function_globals["Tracing"] == "Active"


def test_layer_is_built_for_python313_on_arm64(resources: dict[str, Any]) -> None:
    layer = resources["CallcancelLayer"]

    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"] == "layers/callcancel/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"]["BuildMethod"] == "python3.13"
    assert layer["Metadata"]["BuildArchitecture"] == "arm64"


# ---- queues -------------------------------------------------------------------------------------


def test_cancel_queue_is_encrypted_and_outwaits_six_function_timeouts(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    queue = props(resources, "CancelQueue")
    function_timeout = template["Globals"]["Function"]["Timeout"]

    assert queue["SqsManagedSseEnabled"] is True
    assert queue["VisibilityTimeout"] >= 6 * function_timeout


def test_cancel_queue_redrives_to_dlq_after_max_attempts_plus_two(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    redrive = props(resources, "CancelQueue")["RedrivePolicy"]
    map_name, top_key, second_key = redrive["maxReceiveCount"]["Fn::FindInMap"]
    mapping = template["Mappings"][map_name]
    allowed_attempts = template["Parameters"]["MaxAttempts"]["AllowedValues"]

    assert redrive["deadLetterTargetArn"] == arn_of("DeadLetterQueue")
    assert top_key == {"Ref": "MaxAttempts"}
    assert set(mapping) == {str(n) for n in allowed_attempts}
    for attempts, row in mapping.items():
        assert row[second_key] == int(attempts) + 2, attempts


def test_dlq_keeps_messages_14_days_longer_than_the_cancel_queue(resources: dict[str, Any]) -> None:
    dlq = props(resources, "DeadLetterQueue")

    assert dlq["SqsManagedSseEnabled"] is True
    assert dlq["MessageRetentionPeriod"] == FOURTEEN_DAYS
    assert dlq["MessageRetentionPeriod"] > props(resources, "CancelQueue")["MessageRetentionPeriod"]


def test_both_queues_deny_requests_without_tls(resources: dict[str, Any]) -> None:
    covered: set[str] = set()
    for resource in resources.values():
        if resource["Type"] != "AWS::SQS::QueuePolicy":
            continue
        denies_insecure = any(
            s["Effect"] == "Deny"
            and as_list(s["Action"]) == ["sqs:*"]
            and str(s["Condition"]["Bool"]["aws:SecureTransport"]).lower() == "false"
            for s in resource["Properties"]["PolicyDocument"]["Statement"]
        )
        if denies_insecure:
            covered |= {queue["Ref"] for queue in resource["Properties"]["Queues"]}

    assert {"CancelQueue", "DeadLetterQueue"} <= covered


# ---- state --------------------------------------------------------------------------------------


def test_deferred_table_is_retained_and_restorable(resources: dict[str, Any]) -> None:
    table = resources["DeferredTable"]

    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")
    assert table["Properties"]["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_idempotency_table_uses_the_powertools_key_and_ttl(resources: dict[str, Any]) -> None:
    table = props(resources, "IdempotencyTable")

    assert resources["IdempotencyTable"]["Type"] == "AWS::DynamoDB::Table"
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}


# ---- the worker ---------------------------------------------------------------------------------


def test_worker_environment_is_exactly_the_contract(resources: dict[str, Any]) -> None:
    env = props(resources, "CancelWorker")["Environment"]["Variables"]

    assert set(env) == CONTRACT_ENV
    assert env["CANCEL_QUEUE_URL"] == {"Ref": "CancelQueue"}
    assert env["DEAD_LETTER_QUEUE_URL"] == {"Ref": "DeadLetterQueue"}
    assert env["IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    assert env["DEFERRED_TABLE"] == {"Ref": "DeferredTable"}


def test_worker_uses_the_layer_and_no_function_dead_letter_queue(resources: dict[str, Any]) -> None:
    worker = props(resources, "CancelWorker")

    assert worker["Layers"] == [{"Ref": "CallcancelLayer"}]
    assert worker["Handler"] == "app.lambda_handler"
    assert "DeadLetterQueue" not in worker


def test_sqs_event_reports_partial_failures_with_bounded_concurrency(resources: dict[str, Any]) -> None:
    (event,) = props(resources, "CancelWorker")["Events"].values()

    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == arn_of("CancelQueue")
    assert event["Properties"]["BatchSize"] == 10
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "MaxConcurrency"}


def test_worker_role_is_its_own_and_trusts_only_lambda(resources: dict[str, Any]) -> None:
    role = resources["CancelWorkerRole"]
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]

    assert props(resources, "CancelWorker")["Role"] == arn_of("CancelWorkerRole")
    assert role["Type"] == "AWS::IAM::Role"
    assert "ManagedPolicyArns" not in role["Properties"]
    assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}


def test_worker_reads_only_prefixed_secrets(worker_statements: list[dict[str, Any]]) -> None:
    (statement,) = statements_with(worker_statements, "secretsmanager:")

    assert as_list(statement["Action"]) == ["secretsmanager:GetSecretValue"]
    assert statement["Resource"]["Fn::Sub"].endswith("secret:${SecretPrefix}/*")


def test_only_xray_is_granted_on_every_resource(worker_statements: list[dict[str, Any]]) -> None:
    wildcard = [s for s in worker_statements if "*" in as_list(s["Resource"])]

    assert wildcard, "X-Ray needs Resource '*'"
    for statement in wildcard:
        assert all(action.startswith("xray:") for action in as_list(statement["Action"])), statement


def test_worker_logs_only_to_its_own_log_group(
    resources: dict[str, Any], worker_statements: list[dict[str, Any]]
) -> None:
    (statement,) = statements_with(worker_statements, "logs:")

    assert statement["Resource"] == arn_of("CancelWorkerLogGroup")
    assert props(resources, "CancelWorker")["LoggingConfig"]["LogGroup"] == {"Ref": "CancelWorkerLogGroup"}


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("sqs:SendMessage", arn_of("DeadLetterQueue")),
        ("sqs:ChangeMessageVisibility", arn_of("CancelQueue")),
        ("sqs:ReceiveMessage", arn_of("CancelQueue")),
        ("sqs:DeleteMessage", arn_of("CancelQueue")),
        ("dynamodb:GetItem", arn_of("IdempotencyTable")),
    ],
)
def test_worker_action_is_granted_only_on_its_resource(
    worker_statements: list[dict[str, Any]], action: str, resource: dict[str, Any]
) -> None:
    granting = statements_with(worker_statements, action)

    assert granting, action
    for statement in granting:
        assert as_list(statement["Resource"]) == [resource], statement


def test_worker_may_only_put_into_the_deferred_table(worker_statements: list[dict[str, Any]]) -> None:
    on_deferred = [s for s in worker_statements if arn_of("DeferredTable") in as_list(s["Resource"])]

    assert [as_list(s["Action"]) for s in on_deferred] == [["dynamodb:PutItem"]]
    tables = ([arn_of("IdempotencyTable")], [arn_of("DeferredTable")], [arn_of("OutcomeTable")])
    for statement in statements_with(worker_statements, "dynamodb:"):
        assert as_list(statement["Resource"]) in tables


def test_worker_may_only_update_outcome_records_and_put_events_on_its_bus(
    worker_statements: list[dict[str, Any]], resources: dict[str, Any]
) -> None:
    on_outcomes = [s for s in worker_statements if arn_of("OutcomeTable") in as_list(s["Resource"])]
    (events,) = statements_with(worker_statements, "events:")
    env = props(resources, "CancelWorker")["Environment"]["Variables"]

    assert [as_list(s["Action"]) for s in on_outcomes] == [["dynamodb:UpdateItem"]]
    assert (as_list(events["Action"]), as_list(events["Resource"])) == (
        ["events:PutEvents"],
        [arn_of("CancelEventBus")],
    )
    assert env["OUTCOME_TABLE"] == {"Ref": "OutcomeTable"}
    assert env["EVENT_BUS_NAME"] == {"Ref": "CancelEventBus"}
    assert env["OUTCOME_RETENTION_DAYS"] == {"Ref": "OutcomeRetentionDays"}
    (update_item,) = [s for s in statements_with(worker_statements, "dynamodb:UpdateItem") if s not in on_outcomes]
    assert as_list(update_item["Resource"]) == [arn_of("IdempotencyTable")]


def test_functions_reserve_their_concurrency(resources: dict[str, Any]) -> None:
    (event,) = props(resources, "CancelWorker")["Events"].values()

    # The worker's reservation matches the queue's cap (AWS: reserved >= MaximumConcurrency, or throttles).
    assert props(resources, "CancelWorker")["ReservedConcurrentExecutions"] == {"Ref": "MaxConcurrency"}
    assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "MaxConcurrency"}
    assert props(resources, "NightlyPurge")["ReservedConcurrentExecutions"] == 1
    assert props(resources, "DlqDigest")["ReservedConcurrentExecutions"] == 1


# ---- the nightly purge --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def purge_statements(resources: dict[str, Any]) -> list[dict[str, Any]]:
    role = props(resources, "NightlyPurgeRole")
    return [statement for policy in role["Policies"] for statement in policy["PolicyDocument"]["Statement"]]


def granted(statements: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(action, resource) pairs, each resource rendered as a string for comparison."""
    return {
        (action, str(resource))
        for s in statements
        if s["Effect"] == "Allow"
        for action in as_list(s["Action"])
        for resource in as_list(s["Resource"])
    }


def test_purge_runs_on_a_scheduler_schedule_in_the_parameters_time_zone(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    (event,) = props(resources, "NightlyPurge")["Events"].values()
    schedule = event["Properties"]

    assert event["Type"] == "ScheduleV2"
    assert schedule["ScheduleExpression"] == {"Ref": "PurgeSchedule"}
    assert schedule["ScheduleExpressionTimezone"] == {"Ref": "PurgeTimezone"}
    assert template["Parameters"]["PurgeSchedule"]["Default"] == "cron(0 2 * * ? *)"
    assert template["Parameters"]["PurgeTimezone"]["Default"] == "Asia/Kolkata"
    assert schedule["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert schedule["RetryPolicy"]["MaximumEventAgeInSeconds"] >= 60
    assert schedule["DeadLetterConfig"] == {"Arn": arn_of("PurgeFailures")}
    assert schedule["Name"] == {"Fn::Sub": "${AWS::StackName}-nightly-purge"}
    # Retries of one firing carry its scheduled time, so they purge the same date (same request_ids).
    assert json.loads(schedule["Input"]) == {"time": "<aws.scheduler.scheduled-time>"}


def test_failed_purge_runs_are_retried_then_land_on_purge_failures(resources: dict[str, Any]) -> None:
    invoke = props(resources, "NightlyPurge")["EventInvokeConfig"]
    failures = props(resources, "PurgeFailures")

    assert invoke["MaximumRetryAttempts"] in (1, 2)
    assert invoke["DestinationConfig"]["OnFailure"] == {"Type": "SQS", "Destination": arn_of("PurgeFailures")}
    assert failures["SqsManagedSseEnabled"] is True
    assert failures["MessageRetentionPeriod"] == FOURTEEN_DAYS
    policy = props(resources, "QueuesPolicy")
    assert {"Ref": "PurgeFailures"} in policy["Queues"]
    assert arn_of("PurgeFailures") in policy["PolicyDocument"]["Statement"][0]["Resource"]


def test_purge_environment_names_the_plan_queue_and_table(resources: dict[str, Any]) -> None:
    purge = props(resources, "NightlyPurge")

    assert purge["Environment"]["Variables"] == {
        "PURGE_PLAN_PARAMETER": {"Ref": "PurgePlan"},
        "CANCEL_QUEUE_URL": {"Ref": "CancelQueue"},
        "DEFERRED_TABLE": {"Ref": "DeferredTable"},
        "OUTCOME_TABLE": {"Ref": "OutcomeTable"},
    }
    assert purge["Layers"] == [{"Ref": "CallcancelLayer"}]
    assert props(resources, "PurgePlan")["Value"] == '{"targets": []}'
    assert props(resources, "PurgePlan")["Name"] == {"Fn::Sub": "/${AWS::StackName}/purge-plan"}


def test_purge_role_is_its_own_and_least_privilege(
    resources: dict[str, Any], purge_statements: list[dict[str, Any]]
) -> None:
    role = props(resources, "NightlyPurgeRole")
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    plan_arn = str(
        {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/${AWS::StackName}/purge-plan"}
    )

    assert props(resources, "NightlyPurge")["Role"] == arn_of("NightlyPurgeRole")
    assert "ManagedPolicyArns" not in role
    assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert props(resources, "NightlyPurge")["LoggingConfig"]["LogGroup"] == {"Ref": "NightlyPurgeLogGroup"}
    assert granted(purge_statements) == {
        ("logs:CreateLogStream", str(arn_of("NightlyPurgeLogGroup"))),
        ("logs:PutLogEvents", str(arn_of("NightlyPurgeLogGroup"))),
        ("xray:PutTraceSegments", "*"),
        ("xray:PutTelemetryRecords", "*"),
        ("ssm:GetParameter", plan_arn),
        ("ssm:GetParametersByPath", plan_arn),
        ("sqs:SendMessage", str(arn_of("CancelQueue"))),
        ("sqs:SendMessage", str(arn_of("PurgeFailures"))),
        ("dynamodb:Scan", str(arn_of("DeferredTable"))),
        ("dynamodb:BatchWriteItem", str(arn_of("DeferredTable"))),
        ("dynamodb:BatchGetItem", str(arn_of("OutcomeTable"))),
    }


# ---- outcomes for producers, and the EventBridge way in ----------------------------------------------


def test_outcome_table_is_keyed_by_id_expires_by_ttl_and_outlives_the_stack(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    table = props(resources, "OutcomeTable")

    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert resources["OutcomeTable"]["DeletionPolicy"] == "Retain"
    assert template["Parameters"]["OutcomeRetentionDays"]["Default"] == 400
    assert template["Outputs"]["OutcomeTableName"]["Value"] == {"Ref": "OutcomeTable"}
    assert template["Outputs"]["EventBusName"]["Value"] == {"Ref": "CancelEventBus"}


def test_outcome_metric_alarms_watch_the_metrics_the_worker_counts(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    powertools = template["Globals"]["Function"]["Environment"]["Variables"]
    for alarm, metric in (
        ("OutcomeRecordsFailedAlarm", RECORD_FAILED_METRIC),
        ("OutcomeEventsFailedAlarm", EVENT_FAILED_METRIC),
    ):
        spec = props(resources, alarm)
        assert (spec["Namespace"], spec["MetricName"]) == (powertools["POWERTOOLS_METRICS_NAMESPACE"], metric)
        assert spec["Dimensions"] == [{"Name": "service", "Value": powertools["POWERTOOLS_SERVICE_NAME"]}]


def test_cancel_requested_events_go_to_the_cancel_queue_with_retries_and_a_dead_letter_queue(
    resources: dict[str, Any],
) -> None:
    rule = props(resources, "CancelRequestedRule")
    (target,) = rule["Targets"]
    failures = props(resources, "CancelRequestedFailures")

    assert rule["EventBusName"] == {"Ref": "CancelEventBus"}
    assert rule["EventPattern"] == {"detail-type": ["Cancel Requested"]}
    assert rule["State"] == "ENABLED"
    assert target["Arn"] == arn_of("CancelQueue")
    assert target["InputPath"] == "$.detail"  # the detail is the message body
    assert target["DeadLetterConfig"] == {"Arn": arn_of("CancelRequestedFailures")}
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 3600
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert failures["SqsManagedSseEnabled"] is True
    assert failures["MessageRetentionPeriod"] == FOURTEEN_DAYS


# queue -> the only rule that may send to it as EventBridge
EVENTBRIDGE_SENDERS = {
    "CancelQueue": "CancelRequestedRule",  # the way in
    "CancelRequestedFailures": "CancelRequestedRule",
    "DigestFailures": "DlqDigestDeadLetterAlarm",  # the rule SAM makes from DlqDigest's event
}


def test_only_named_rules_may_send_as_eventbridge(resources: dict[str, Any], transformed: dict[str, Any]) -> None:
    statements = props(resources, "QueuesPolicy")["PolicyDocument"]["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    deny = next(s for s in statements if s["Effect"] == "Deny")
    senders = {
        s["Resource"]["Fn::GetAtt"][0]: s["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0] for s in allows
    }

    assert senders == EVENTBRIDGE_SENDERS
    for statement in allows:
        assert statement["Principal"] == {"Service": "events.amazonaws.com"}
        assert as_list(statement["Action"]) == ["sqs:SendMessage"]
        assert set(statement["Condition"]) == {"ArnEquals"}
    for queue, rule in EVENTBRIDGE_SENDERS.items():
        assert arn_of(queue) in deny["Resource"]
        assert {"Ref": queue} in props(resources, "QueuesPolicy")["Queues"]
        assert transformed[rule]["Type"] == "AWS::Events::Rule"


def test_no_outcome_event_matches_a_rule_on_the_bus(resources: dict[str, Any]) -> None:
    rules = [
        props(resources, name)
        for name, r in resources.items()
        if r["Type"] == "AWS::Events::Rule" and props(resources, name).get("EventBusName") == {"Ref": "CancelEventBus"}
    ]
    assert rules, "the way-in rule is on the bus"
    detail = {"request_key": "k", "provider": "ryng", "account": "acme", "target": "c-1", "outcome": "cancelled"}
    for detail_type in [*DETAIL_TYPES.values(), CANCEL_FAILED]:
        event = {"source": EVENT_SOURCE, "detail-type": detail_type, "detail": detail}
        for rule in rules:
            assert not EventPattern.load(json.dumps(rule["EventPattern"])).matches_event(event), detail_type
    requested = {"source": "com.example.orders", "detail-type": "Cancel Requested", "detail": detail}
    assert all(EventPattern.load(json.dumps(rule["EventPattern"])).matches_event(requested) for rule in rules)


# ---- alarms, alert topic, digest, dashboard ------------------------------------------------------

# alarm -> (namespace, metric, dimension name, the resource it watches, comparison, missing data)
ALARMS = {
    "DeadLetterAlarm": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "DeadLetterQueue"),
    "PurgeFailuresAlarm": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "PurgeFailures"),
    "DigestFailuresAlarm": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "DigestFailures"),
    "OldestRequestAlarm": ("AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", "CancelQueue"),
    "WorkerErrorsAlarm": ("AWS/Lambda", "Errors", "FunctionName", "CancelWorker"),
    "WorkerThrottlesAlarm": ("AWS/Lambda", "Throttles", "FunctionName", "CancelWorker"),
    "OutcomeRecordsFailedAlarm": ("Callcancel", "OutcomeRecordFailed", "service", "callcancel"),
    "OutcomeEventsFailedAlarm": ("Callcancel", "OutcomeEventFailed", "service", "callcancel"),
    "CancelRequestedFailuresAlarm": (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        "QueueName",
        "CancelRequestedFailures",
    ),
}


def test_the_alarms_are_exactly_these(resources: dict[str, Any]) -> None:
    assert {name for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"} == set(ALARMS)


@pytest.mark.parametrize("alarm", sorted(ALARMS))
def test_alarm_watches_its_resource_and_notifies_the_alert_topic(resources: dict[str, Any], alarm: str) -> None:
    namespace, metric, dimension, watched = ALARMS[alarm]
    spec = props(resources, alarm)
    references = {"AWS/Lambda": {"Ref": watched}, "AWS/SQS": {"Fn::GetAtt": [watched, "QueueName"]}}
    # Our own metrics carry the Powertools service dimension, the template's POWERTOOLS_SERVICE_NAME.
    reference = references.get(namespace, watched)

    assert (spec["Namespace"], spec["MetricName"]) == (namespace, metric)
    assert spec["Dimensions"] == [{"Name": dimension, "Value": reference}]
    assert spec["AlarmActions"] == [{"Ref": "AlertTopic"}]
    assert spec["OKActions"] == [{"Ref": "AlertTopic"}]
    # Chosen per alarm, not left to the default (`missing`, which would leave idle stacks INSUFFICIENT_DATA).
    assert spec["TreatMissingData"] == "notBreaching"
    assert spec["AlarmDescription"]


@pytest.mark.parametrize("alarm", sorted(set(ALARMS) - {"OldestRequestAlarm"}))
def test_count_alarms_fire_on_the_first_one(resources: dict[str, Any], alarm: str) -> None:
    spec = props(resources, alarm)

    assert (spec["Threshold"], spec["ComparisonOperator"], spec["EvaluationPeriods"]) == (
        1,
        "GreaterThanOrEqualToThreshold",
        1,
    )


def test_oldest_request_alarm_uses_the_threshold_parameter(template: dict[str, Any], resources: dict[str, Any]) -> None:
    spec = props(resources, "OldestRequestAlarm")

    assert spec["Threshold"] == {"Ref": "OldestRequestAlarmSeconds"}
    assert spec["ComparisonOperator"] == "GreaterThanThreshold"
    assert template["Parameters"]["OldestRequestAlarmSeconds"]["Type"] == "Number"


def test_alert_topic_is_encrypted_with_a_key_cloudwatch_may_use(resources: dict[str, Any]) -> None:
    key_policy = props(resources, "AlertKey")["KeyPolicy"]["Statement"]
    cloudwatch = [s for s in key_policy if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]

    assert props(resources, "AlertTopic")["KmsMasterKeyId"] == {"Ref": "AlertKey"}
    assert props(resources, "AlertKey")["EnableKeyRotation"] is True
    assert [set(s["Action"]) for s in cloudwatch] == [{"kms:Decrypt", "kms:GenerateDataKey*"}]


def test_email_subscription_exists_only_with_an_alert_email(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    subscription = resources["AlertEmailSubscription"]

    assert subscription["Condition"] == "HasAlertEmail"
    assert template["Conditions"]["HasAlertEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlertEmail"}, ""]}]}
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": "AlertTopic"},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlertEmail"},
    }
    assert template["Parameters"]["AlertEmail"]["Default"] == ""


def test_digest_runs_when_the_dead_letter_alarm_goes_to_alarm(resources: dict[str, Any]) -> None:
    digest = props(resources, "DlqDigest")
    (event,) = digest["Events"].values()
    pattern = event["Properties"]["Pattern"]

    assert event["Type"] == "EventBridgeRule"
    assert pattern["source"] == ["aws.cloudwatch"]
    assert pattern["detail-type"] == ["CloudWatch Alarm State Change"]
    assert pattern["detail"] == {
        "alarmName": [props(resources, "DeadLetterAlarm")["AlarmName"]],
        "state": {"value": ["ALARM"]},
    }
    assert digest["Environment"]["Variables"] == {
        "DEAD_LETTER_QUEUE_URL": {"Ref": "DeadLetterQueue"},
        "ALERT_TOPIC_ARN": {"Ref": "AlertTopic"},
        "STACK_NAME": {"Ref": "AWS::StackName"},
        "DIGEST_LIMIT": "100",
    }


def test_digest_role_peeks_the_dlq_and_publishes_only_to_the_topic(resources: dict[str, Any]) -> None:
    role = props(resources, "DlqDigestRole")
    statements = [statement for policy in role["Policies"] for statement in policy["PolicyDocument"]["Statement"]]

    assert props(resources, "DlqDigest")["Role"] == arn_of("DlqDigestRole")
    assert granted(statements) == {
        ("logs:CreateLogStream", str(arn_of("DlqDigestLogGroup"))),
        ("logs:PutLogEvents", str(arn_of("DlqDigestLogGroup"))),
        ("xray:PutTraceSegments", "*"),
        ("xray:PutTelemetryRecords", "*"),
        ("sqs:ReceiveMessage", str(arn_of("DeadLetterQueue"))),
        ("sqs:ChangeMessageVisibility", str(arn_of("DeadLetterQueue"))),
        ("sqs:GetQueueAttributes", str(arn_of("DeadLetterQueue"))),
        ("sns:Publish", str({"Ref": "AlertTopic"})),
        ("sqs:SendMessage", str(arn_of("DigestFailures"))),
        ("kms:GenerateDataKey", str(arn_of("AlertKey"))),
        ("kms:Decrypt", str(arn_of("AlertKey"))),
    }


def test_digest_rule_retries_then_dead_letters_to_digest_failures(transformed: dict[str, Any]) -> None:
    rules = [r for r in transformed.values() if r["Type"] == "AWS::Events::Rule"]
    (target,) = [t for rule in rules for t in rule["Properties"]["Targets"] if t["Arn"] == arn_of("DlqDigest")]

    assert target["DeadLetterConfig"] == {"Arn": arn_of("DigestFailures")}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] >= 60


def test_failed_digest_runs_are_retried_then_land_on_digest_failures(transformed: dict[str, Any]) -> None:
    (invoke,) = [
        r["Properties"]
        for r in transformed.values()
        if r["Type"] == "AWS::Lambda::EventInvokeConfig" and r["Properties"]["FunctionName"] == {"Ref": "DlqDigest"}
    ]

    assert invoke["MaximumRetryAttempts"] in (1, 2)
    assert invoke["DestinationConfig"]["OnFailure"] == {"Destination": arn_of("DigestFailures")}


def test_digest_failures_is_encrypted_and_kept_14_days(resources: dict[str, Any]) -> None:
    failures = props(resources, "DigestFailures")

    assert failures["SqsManagedSseEnabled"] is True
    assert failures["MessageRetentionPeriod"] == FOURTEEN_DAYS


def test_dashboard_shows_outcomes_dlq_depth_queue_age_duration_and_concurrency(resources: dict[str, Any]) -> None:
    body, variables = props(resources, "Dashboard")["DashboardBody"]["Fn::Sub"]
    # Fill the substitutions with placeholders: what is left must be JSON CloudWatch accepts.
    rendered = re.sub(
        r"\$\{(?:AWS::)?([A-Za-z]+)(?:\.[A-Za-z]+)?\}",
        lambda m: "1" if m[1].endswith(("Seconds", "Concurrency")) else m[1],
        body,
    )
    widgets = json.loads(rendered)["widgets"]
    metrics = {
        tuple(line[:2])
        for w in widgets
        if w["type"] == "metric"
        for line in w["properties"]["metrics"]
        if isinstance(line[0], str)
    }
    expressions = [
        line[0]["expression"]
        for w in widgets
        if w["type"] == "metric"
        for line in w["properties"]["metrics"]
        if isinstance(line[0], dict)
    ]
    (alarms,) = [w["properties"]["alarms"] for w in widgets if w["type"] == "alarm"]

    assert expressions == ["SEARCH('{Callcancel,outcome,provider,service} MetricName=\"Outcome\"', 'Sum', 300)"]
    assert {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/Lambda", "Duration"),
        ("AWS/Lambda", "ConcurrentExecutions"),
    } <= metrics
    assert sorted(alarm.removeprefix("AlarmArn-") for alarm in alarms) == sorted(
        props(resources, name)["AlarmName"]["Fn::Sub"].removeprefix("${AWS::StackName}-") for name in ALARMS
    )
    assert variables["AlarmArn"]["Fn::Sub"].endswith(":alarm:${AWS::StackName}")


# ---- security checks (make lint runs cfn-lint with the serverless rules, and checkov) ----------------


def test_every_checkov_skip_says_why(resources: dict[str, Any]) -> None:
    skips = [
        (name, skip)
        for name, resource in resources.items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]

    assert skips
    for name, skip in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), (name, skip)
        assert len(skip.get("comment", "").split()) >= 10, (name, skip["id"], "a reason a reviewer can accept")


def test_every_cfn_lint_ignore_says_why_in_the_comment_above_it() -> None:
    lines = TEMPLATE.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "ignore_checks:"]

    assert starts
    for start in starts:
        indent = len(lines[start + 1]) - len(lines[start + 1].lstrip())
        entries = []
        for i in range(start + 1, len(lines)):
            if len(lines[i]) - len(lines[i].lstrip()) != indent:
                break
            if lines[i].lstrip().startswith("- "):
                entries.append(i)
        assert entries, start + 1
        for i in entries:
            assert lines[i - 1].lstrip().startswith("# "), f"template.yaml:{i + 1} {lines[i].strip()} has no reason"


# ---- outputs and samconfig ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        "CancelQueueUrl",
        "CancelQueueArn",
        "DeadLetterQueueUrl",
        "DeadLetterQueueArn",
        "IdempotencyTableName",
        "CancelWorkerName",
        "PurgeFailuresUrl",
        "DeferredTableName",
        "PurgePlanParameter",
        "NightlyPurgeName",
        "AlertTopicArn",
        "DlqDigestName",
        "DigestFailuresUrl",
        "DashboardName",
        "EventBusName",
        "OutcomeTableName",
        "CancelRequestedFailuresUrl",
    ],
)
def test_output_is_present_and_described(template: dict[str, Any], output: str) -> None:
    assert template["Outputs"][output]["Description"]


def test_samconfig_has_dev_and_prod_stacks() -> None:
    config = tomllib.loads(SAMCONFIG.read_text())

    assert config["default"]["global"]["parameters"]["stack_name"] == "callcancel-dev"
    assert config["prod"]["global"]["parameters"]["stack_name"] == "callcancel-prod"
    assert config["default"]["deploy"]["parameters"]["confirm_changeset"] is False
    assert config["prod"]["deploy"]["parameters"]["confirm_changeset"] is True


# ---- sam validate and sam build -----------------------------------------------------------------


@dataclass(frozen=True)
class SamRun:
    validate: subprocess.CompletedProcess[str]
    build: subprocess.CompletedProcess[str]
    build_dir: Path


def run_sam(*args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent  # the venv's bin: holds sam and the python3.13 sam build needs
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(
        [str(bin_dir / "sam"), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def sam_run(tmp_path_factory: pytest.TempPathFactory) -> SamRun:
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    validate = run_sam("validate", "--lint", "-t", "template.yaml")
    # --no-cached: samconfig caches builds under .aws-sam/ in the repo; a test leaves nothing behind.
    build = run_sam(
        "build", "-t", "template.yaml", "--build-dir", str(build_dir), "--base-dir", str(REPO_ROOT), "--no-cached"
    )
    return SamRun(validate=validate, build=build, build_dir=build_dir)


def test_sam_validate_lint_passes(sam_run: SamRun) -> None:
    assert sam_run.validate.returncode == 0, sam_run.validate.stdout + sam_run.validate.stderr


def test_sam_build_ships_the_package_and_arm64_dependencies(sam_run: SamRun) -> None:
    assert sam_run.build.returncode == 0, sam_run.build.stdout + sam_run.build.stderr
    layer = sam_run.build_dir / "CallcancelLayer" / "python"

    assert (layer / "callcancel" / "__init__.py").is_file()
    assert [so.name for so in (layer / "pydantic_core").glob("*.so") if "aarch64" in so.name]
    assert (sam_run.build_dir / "CancelWorker" / "app.py").is_file()
    assert (sam_run.build_dir / "NightlyPurge" / "app.py").is_file()
    assert (sam_run.build_dir / "DlqDigest" / "app.py").is_file()
