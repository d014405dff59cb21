"""The real template.yaml, deployed into the embedded AWS: the wiring the functions see is the stack's own."""

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest

from callcancel_local.embedded_aws import EmbeddedAws
from callcancel_local.stack import DeployedStack, DeployError, deploy

pytestmark = [pytest.mark.e2e]

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
SIMULATED_RYNG = "http://127.0.0.1:1/ryng/{subdomain}"


@pytest.fixture(scope="module")
def stacks(embedded_aws: EmbeddedAws) -> dict[str, DeployedStack]:
    embedded_aws.reset()
    return {
        "default": deploy(TEMPLATE, stack_name="wiring-default"),
        "custom": deploy(
            TEMPLATE, stack_name="wiring-custom", parameters={"MaxAttempts": "3", "RyngBaseUrl": SIMULATED_RYNG}
        ),
    }


def queue_attributes(url: str) -> dict[str, str]:
    return boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_worker_environment_names_the_stacks_own_resources(stacks: dict[str, DeployedStack]) -> None:
    for stack in stacks.values():
        env = stack.functions["CancelWorker"].environment
        assert env["CANCEL_QUEUE_URL"] == stack.outputs["CancelQueueUrl"] == stack.resources["CancelQueue"]
        assert env["DEAD_LETTER_QUEUE_URL"] == stack.outputs["DeadLetterQueueUrl"]
        assert env["IDEMPOTENCY_TABLE"] == stack.outputs["IdempotencyTableName"]
        assert stack.name in env["CANCEL_QUEUE_URL"]
    default, custom = stacks["default"], stacks["custom"]
    assert default.functions["CancelWorker"].environment["CANCEL_QUEUE_URL"] != custom.outputs["CancelQueueUrl"]


def test_worker_is_deployed_from_the_templates_code(stacks: dict[str, DeployedStack]) -> None:
    worker = stacks["default"].functions["CancelWorker"]
    assert worker.name == stacks["default"].outputs["CancelWorkerName"]
    assert worker.handler == "app.lambda_handler"
    assert worker.code_dir == TEMPLATE.parent / "functions" / "cancel_worker"
    assert (worker.code_dir / "app.py").is_file()


@pytest.mark.parametrize(("stack", "max_attempts"), [("default", 5), ("custom", 3)])
def test_redrive_is_a_safety_net_after_the_last_attempt(
    stacks: dict[str, DeployedStack], stack: str, max_attempts: int
) -> None:
    deployed = stacks[stack]
    assert deployed.functions["CancelWorker"].environment["MAX_ATTEMPTS"] == str(max_attempts)
    redrive = json.loads(queue_attributes(deployed.outputs["CancelQueueUrl"])["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == deployed.outputs["DeadLetterQueueArn"]
    assert int(redrive["maxReceiveCount"]) == max_attempts + 2


def test_visibility_timeout_covers_six_function_timeouts(stacks: dict[str, DeployedStack]) -> None:
    stack = stacks["default"]
    visibility = int(queue_attributes(stack.outputs["CancelQueueUrl"])["VisibilityTimeout"])
    assert visibility >= 6 * stack.functions["CancelWorker"].timeout


def test_worker_consumes_the_queue_in_batches_with_partial_failures(stacks: dict[str, DeployedStack]) -> None:
    stack = stacks["default"]
    (mapping,) = stack.functions["CancelWorker"].sqs_sources
    assert mapping.queue_url == stack.outputs["CancelQueueUrl"]
    assert mapping.queue_arn == stack.outputs["CancelQueueArn"]
    assert mapping.batch_size == 10
    assert mapping.report_batch_item_failures


def test_moto_leaves_the_queue_to_the_local_poller(stacks: dict[str, DeployedStack]) -> None:
    # An enabled mapping would make moto receive the message inside SendMessage (and try Docker).
    sqs = boto3.client("sqs")
    url = stacks["default"].outputs["CancelQueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="{}")
    (message,) = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_parameters_reach_the_deployed_environment(stacks: dict[str, DeployedStack]) -> None:
    assert stacks["custom"].functions["CancelWorker"].environment["RYNG_BASE_URL"] == SIMULATED_RYNG
    assert stacks["default"].functions["CancelWorker"].environment["RYNG_BASE_URL"] == "https://{subdomain}.ryng.in"


def test_what_moto_cannot_create_is_reported(stacks: dict[str, DeployedStack]) -> None:
    assert ("QueuesPolicy", "AWS::SQS::QueuePolicy") in stacks["default"].not_created
    assert "QueuesPolicy" not in stacks["default"].resources


def broken_template(tmp_path: Path, old: str, new: str) -> Path:
    text = TEMPLATE.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    # The code stays where it is.
    text = re.sub(r"Uri: (functions|layers)/", lambda m: f"Uri: {TEMPLATE.parent / m[1]}/", text)
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("!GetAtt DeadLetterQueue.Arn\n", "!GetAtt NoSuchQueue.Arn\n", "references undefined resource NoSuchQueue"),
        ("Value: !GetAtt CancelQueue.Arn", "Value: !GetAtt NoSuchQueue.Arn", "moto's CloudFormation crashed"),
        ("BatchSize: 10\n", "BatchSize: 10\n            Bogus: 1\n", "property Bogus not defined"),
    ],
    ids=["bad-getatt", "bad-getatt-in-output", "translator-error"],
)
def test_an_undeployable_template_raises_a_readable_error(
    embedded_aws: EmbeddedAws, tmp_path: Path, old: str, new: str, expected: str
) -> None:
    with pytest.raises(DeployError, match=expected) as error:
        deploy(broken_template(tmp_path, old, new), stack_name="wiring-broken")
    assert "Traceback" not in str(error.value)
    # Like CloudFormation's rollback, nothing half-made is left behind.
    names = [s["StackName"] for s in boto3.client("cloudformation").describe_stacks()["Stacks"]]
    assert "wiring-broken" not in names


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [({"MaxAttempts": "11"}, "MaxAttempts='11' is not one of"), ({"Nope": "1"}, "not declared by the template: Nope")],
)
def test_bad_parameters_raise_a_readable_error(
    embedded_aws: EmbeddedAws, parameters: dict[str, Any], expected: str
) -> None:
    with pytest.raises(DeployError, match=expected):
        deploy(TEMPLATE, stack_name="wiring-bad-parameters", parameters=parameters)


def test_a_second_deploy_under_the_same_name_is_refused_and_keeps_the_first(stacks: dict[str, DeployedStack]) -> None:
    with pytest.raises(DeployError, match="already exists"):
        deploy(TEMPLATE, stack_name="wiring-default")
    status = boto3.client("cloudformation").describe_stacks(StackName="wiring-default")["Stacks"][0]["StackStatus"]
    assert status == "CREATE_COMPLETE"
