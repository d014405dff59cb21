"""The worker's cold path: what importing its handler loads, and X-Ray working where tracing is on.

Each case imports in a fresh interpreter, the way a new Lambda container does: the parent test process has
imported everything already.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"

# Loads the handler as Lambda does, then reports what it imported.
IMPORT_WORKER = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("app", {str(REPO / "functions/cancel_worker/app.py")!r})
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
from callcancel.models import PurgePlan
print(json.dumps({{"modules": sorted(sys.modules), "purge_plan_built": PurgePlan.__pydantic_complete__}}))
"""


def _run(code: str, **environ: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("POWERTOOLS_TRACE_DISABLED", "LAMBDA_TASK_ROOT")}
    env.update({"AWS_DEFAULT_REGION": "us-east-1", **environ})
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_worker_imports_only_what_it_runs_when_tracing_is_off() -> None:
    loaded = json.loads(_run(IMPORT_WORKER, POWERTOOLS_TRACE_DISABLED="true"))
    modules = set(loaded["modules"])

    assert "aws_xray_sdk.core" not in modules
    # Powertools' batch utility builds these pydantic models when pydantic is imported before it.
    assert "aws_lambda_powertools.utilities.parser.models" not in modules
    assert not {"callcancel.purge", "callcancel.digest", "callcancel_tools", "rich"} & modules
    assert loaded["purge_plan_built"] is False


def test_tracing_on_sends_the_handler_subsegment_to_the_xray_daemon() -> None:
    handler = """
from callcancel.observability import tracer

@tracer.capture_lambda_handler(capture_response=False)
def handler(event, context):
    return {"ok": True}

print(handler({}, None))
"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon:
        daemon.bind(("127.0.0.1", 0))
        daemon.settimeout(10)
        host, port = daemon.getsockname()
        # What Lambda sets for a function with `Tracing: Active`.
        _run(
            handler,
            LAMBDA_TASK_ROOT=str(REPO),
            AWS_XRAY_DAEMON_ADDRESS=f"{host}:{port}",
            _X_AMZN_TRACE_ID=TRACE_HEADER,
        )
        _, document = daemon.recv(65536).decode().split("\n", 1)

    subsegment = json.loads(document)
    assert subsegment["name"] == "## handler"
    assert subsegment["trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert subsegment["annotations"] == {"ColdStart": True, "Service": "callcancel"}


def test_tracing_off_runs_the_handler_without_the_xray_sdk() -> None:
    handler = """
import sys
from callcancel.observability import tracer

@tracer.capture_lambda_handler(capture_response=False)
def handler(event, context):
    return "ran"

print(handler({}, None), "aws_xray_sdk.core" in sys.modules)
"""
    assert _run(handler, POWERTOOLS_TRACE_DISABLED="true").split() == ["ran", "False"]
