"""Deploy the real template.yaml into the embedded AWS (moto), as `sam package` + `sam deploy` would.

No Docker, no sam CLI: local CodeUri/ContentUri folders are zipped into an S3 bucket in moto, the SAM
translator turns the template into plain CloudFormation, and moto's CloudFormation creates the stack.
Everything the caller gets back is read from moto (deployed configuration, not the template), so a
wiring mistake in the template shows up here. Resource types moto cannot create are reported in
`DeployedStack.not_created`, never silently dropped.

boto3 reaches moto through AWS_ENDPOINT_URL (see `EmbeddedAws.environment()`).
"""

import contextlib
import hashlib
import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError
from moto.cloudformation.parsing import resource_class_from_type
from samtranslator.model.exceptions import InvalidDocumentException, InvalidTemplateException  # type: ignore[import-untyped]
from samtranslator.translator.transform import transform  # type: ignore[import-untyped]
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_sqs import SQSClient

ARTIFACT_BUCKET = "callcancel-local-artifacts"
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
_LOCAL_CODE = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}


@dataclass(frozen=True)
class SqsMapping:
    queue_url: str
    queue_arn: str
    batch_size: int
    report_batch_item_failures: bool


@dataclass(frozen=True)
class DeployedFunction:
    logical_id: str
    name: str  # physical function name in moto
    code_dir: Path  # the template's local CodeUri folder (absolute)
    handler: str  # e.g. "app.lambda_handler"
    timeout: int  # seconds, as deployed
    environment: dict[str, str]  # Environment.Variables as deployed (read back from moto)
    sqs_sources: tuple[SqsMapping, ...]


@dataclass(frozen=True)
class DeployedStack:
    name: str
    outputs: dict[str, str]
    resources: dict[str, str]  # logical id -> physical id
    functions: dict[str, DeployedFunction]  # by logical id
    not_created: tuple[tuple[str, str], ...]  # (logical id, resource type) moto's CloudFormation cannot create


def not_created_lines(stack: DeployedStack) -> list[str]:
    """What moto could not create, one line per resource type, for people."""
    by_type: dict[str, list[str]] = {}
    for logical_id, resource_type in stack.not_created:
        by_type.setdefault(resource_type, []).append(logical_id)
    return [f"  not created locally (moto cannot): {kind}: {', '.join(ids)}" for kind, ids in by_type.items()]


class DeployError(Exception):
    """The stack could not be deployed; the message says why, in one paragraph."""


class _NoManagedPolicies:
    """The translator's managed policy loader. Every role in the template is explicit, so none are looked up."""

    def load(self) -> dict[str, str]:
        return {}


def deploy(template: Path, stack_name: str = "callcancel-local", parameters: Mapping[str, str] = {}) -> DeployedStack:
    template = template.resolve()
    try:
        document = yaml_parse(template.read_text(encoding="utf-8"))
    except Exception as exc:  # the YAML loader raises several types
        raise DeployError(f"cannot read {template}: {exc}") from None
    parameter_values = _parameter_values(document, parameters)
    try:
        with _quiet_moto():
            code_dirs = _package(document, template.parent)
            cfn = boto3.client("cloudformation")
            parameter_values["AWS::Region"] = cfn.meta.region_name
            transformed = _transform(document, parameter_values)
            not_created = _not_creatable(transformed)
            _numbers_as_strings(transformed)
            _create_stack(cfn, stack_name, transformed, parameters)
            return _read_back(cfn, stack_name, code_dirs, not_created)
    except (ClientError, BotoCoreError, ResponseParserError) as exc:
        raise DeployError(f"stack {stack_name}: AWS call failed: {exc}") from None


def _parameter_values(document: dict[str, Any], parameters: Mapping[str, str]) -> dict[str, Any]:
    declared: dict[str, Any] = document.get("Parameters") or {}
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise DeployError(f"parameters not declared by the template: {', '.join(unknown)}")
    values = {name: spec["Default"] for name, spec in declared.items() if "Default" in spec}
    values.update(parameters)
    missing = sorted(set(declared) - set(values))
    if missing:
        raise DeployError(f"parameters without a default need a value: {', '.join(missing)}")
    for name, value in parameters.items():  # moto checks no constraint; CloudFormation would refuse these
        problem = _constraint_problem(declared[name], value)
        if problem:
            raise DeployError(f"parameter {name}={value!r} {problem}")
    return values


def _constraint_problem(spec: dict[str, Any], value: str) -> str | None:
    if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
        return f"is not one of {spec['AllowedValues']}"
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        return f"does not match {spec['AllowedPattern']}"
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            return "is not a number"
        if not float(spec.get("MinValue", number)) <= number <= float(spec.get("MaxValue", number)):
            return f"is outside [{spec.get('MinValue', '')}, {spec.get('MaxValue', '')}]"
    return None


def _package(document: dict[str, Any], base: Path) -> dict[str, Path]:
    """Zip local code folders into S3 and point the template at them. Returns logical id -> folder."""
    s3 = boto3.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    code_dirs: dict[str, Path] = {}
    for logical_id, resource in (document.get("Resources") or {}).items():
        key = _LOCAL_CODE.get(resource.get("Type", ""))
        properties = resource.get("Properties") or {}
        uri = properties.get(key) if key else None
        if not isinstance(uri, str) or uri.startswith("s3://"):
            continue
        folder = (base / uri).resolve()
        if not folder.is_dir():
            raise DeployError(f"{logical_id}: {key} {uri!r} is not a folder next to the template")
        archive = _zip(folder)
        object_key = f"{logical_id}/{hashlib.sha256(archive).hexdigest()}.zip"
        s3.put_object(Bucket=ARTIFACT_BUCKET, Key=object_key, Body=archive)
        properties[key] = f"s3://{ARTIFACT_BUCKET}/{object_key}"
        code_dirs[logical_id] = folder
    return code_dirs


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.relative_to(folder).parts:
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _transform(document: dict[str, Any], parameter_values: dict[str, Any]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = transform(document, parameter_values, _NoManagedPolicies())
    except (InvalidDocumentException, InvalidTemplateException) as exc:
        causes = getattr(exc, "causes", None) or []
        detail = " ".join(str(cause.message) for cause in causes) or str(exc)
        raise DeployError(f"the SAM translator rejected the template: {detail}") from None
    return result


def _numbers_as_strings(transformed: dict[str, Any]) -> None:
    """Work around moto: it turns Number parameters into Python numbers, where CloudFormation's Ref yields a
    string. Fn::FindInMap [RedriveReceiveCount, !Ref MaxAttempts, ...] then looks up the key 5 in a mapping
    keyed "5" and moto fails with a bare KeyError (HTTP 500). Declared as String, every Ref resolves as it does in AWS.
    """
    for spec in transformed.get("Parameters", {}).values():
        if spec.get("Type") == "Number":
            spec["Type"] = "String"
            spec.pop("MinValue", None)
            spec.pop("MaxValue", None)
        if "Default" in spec:
            spec["Default"] = str(spec["Default"])
        if "AllowedValues" in spec:
            spec["AllowedValues"] = [str(v) for v in spec["AllowedValues"]]


def _not_creatable(transformed: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    skipped: list[tuple[str, str]] = []
    for logical_id, resource in transformed.get("Resources", {}).items():
        with contextlib.redirect_stdout(io.StringIO()):
            model = resource_class_from_type(resource["Type"])
        if model is None:
            skipped.append((logical_id, resource["Type"]))
    return tuple(skipped)


def _not_supported_line(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("No Moto CloudFormation support")


@contextlib.contextmanager
def _quiet_moto() -> Iterator[None]:
    """Mute moto's "No Moto CloudFormation support for ..." lines and warnings: `not_created` reports them."""
    logger = logging.getLogger("moto")
    logger.addFilter(_not_supported_line)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not supported by moto's CloudFormation", category=UserWarning)
            yield
    finally:
        logger.removeFilter(_not_supported_line)


def _create_stack(
    cfn: "CloudFormationClient", stack_name: str, transformed: dict[str, Any], parameters: Mapping[str, str]
) -> None:
    try:
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=json.dumps(transformed),
            Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()],
            Capabilities=CAPABILITIES,  # type: ignore[arg-type]
        )
    except (ClientError, BotoCoreError, ResponseParserError) as exc:
        already_exists = isinstance(exc, ClientError) and exc.response["Error"]["Code"] == "AlreadyExistsException"
        if not already_exists:
            # AWS rolls a failed creation back; moto keeps the half-made stack, whose outputs then break every
            # DescribeStacks call. Delete it, as the rollback would.
            with contextlib.suppress(ClientError, BotoCoreError, ResponseParserError):
                cfn.delete_stack(StackName=stack_name)
        if isinstance(exc, ClientError):
            raise DeployError(f"stack {stack_name}: CloudFormation refused it: {exc}") from None
        # moto answers an HTML 500 when its template parser crashes; the traceback is in the server's log.
        raise DeployError(
            f"stack {stack_name}: moto's CloudFormation crashed on the template (an internal error, most often an "
            "intrinsic that names a missing resource or attribute; see the embedded AWS log)"
        ) from None
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
        failures = [
            f"{e['LogicalResourceId']} ({e.get('ResourceType', '?')}): {e.get('ResourceStatusReason', 'no reason')}"
            for e in events
            if e.get("ResourceStatus", "").endswith("_FAILED")
        ]
        raise DeployError(
            f"stack {stack_name} ended in {stack['StackStatus']}: "
            + ("; ".join(failures) or stack.get("StackStatusReason", "no reason given"))
        )


def _read_back(
    cfn: "CloudFormationClient",
    stack_name: str,
    code_dirs: dict[str, Path],
    not_created: tuple[tuple[str, str], ...],
) -> DeployedStack:
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    summaries = cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    # moto lists each resource it could not create as an empty summary: those are in not_created instead.
    resources = {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in summaries if r["LogicalResourceId"]}
    queue_urls = {url.rsplit("/", 1)[-1]: url for url in resources.values() if url.startswith("https://sqs.")}
    lambda_client = boto3.client("lambda")
    sqs = boto3.client("sqs")
    functions = {
        r["LogicalResourceId"]: _read_function(
            lambda_client=lambda_client,
            sqs=sqs,
            logical_id=r["LogicalResourceId"],
            name=r["PhysicalResourceId"],
            code_dirs=code_dirs,
            queue_urls=queue_urls,
        )
        for r in summaries
        if r["ResourceType"] == "AWS::Lambda::Function"
    }
    return DeployedStack(stack_name, outputs, resources, functions, not_created)


def _read_function(
    *,
    lambda_client: "LambdaClient",
    sqs: "SQSClient",
    logical_id: str,
    name: str,
    code_dirs: dict[str, Path],
    queue_urls: dict[str, str],
) -> DeployedFunction:
    config = lambda_client.get_function_configuration(FunctionName=name)
    mappings = lambda_client.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
    sources = []
    for mapping in mappings:
        arn = mapping.get("EventSourceArn", "")
        if not arn.startswith("arn:aws:sqs:"):
            continue
        # moto "polls" a queue with an enabled mapping inside SendMessage: it receives the new messages itself
        # (a receive the worker would later count as an attempt) and tries to run the function in Docker.
        # Locally the runner plays Lambda's poller, so the mapping is read as deployed, then disabled in moto.
        lambda_client.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
        account, queue_name = arn.split(":")[4:6]
        # The stack's own queue by the URL its Ref gave (the one in the functions' environment); moto's
        # GetQueueUrl answers with the endpoint's host instead, a different string for the same queue.
        queue_url = (
            queue_urls.get(queue_name)
            or sqs.get_queue_url(QueueName=queue_name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        )
        sources.append(
            SqsMapping(
                queue_url=queue_url,
                queue_arn=arn,
                batch_size=mapping.get("BatchSize", 10),
                report_batch_item_failures="ReportBatchItemFailures" in mapping.get("FunctionResponseTypes", []),
            )
        )
    code_dir = code_dirs.get(logical_id)
    if code_dir is None:
        raise DeployError(f"function {logical_id} has no local code folder in the template")
    return DeployedFunction(
        logical_id=logical_id,
        name=name,
        code_dir=code_dir,
        handler=config.get("Handler", ""),
        timeout=config.get("Timeout", 3),
        environment=dict(config.get("Environment", {}).get("Variables", {})),
        sqs_sources=tuple(sources),
    )


__all__ = ["DeployError", "DeployedFunction", "DeployedStack", "SqsMapping", "deploy"]
