"""One worker invocation in a process of its own, for tests that kill it the way Lambda does (SIGKILL).

Reads a Lambda SQS event (JSON) on stdin and runs the real handler on it, with the environment it was
given. `CHILD_HANG_ON=<Operation>` makes that AWS operation hang forever, after printing `hanging <Operation>`
on stdout: the parent then knows exactly which step the kill interrupts.
"""

import json
import os
import sys
import threading
from typing import Any

from botocore.client import BaseClient

from callcancel_local.lambda_runtime import LocalLambdaContext, load_handler
from tests.support import REPO


def _hang_on(operation: str) -> None:
    make_api_call = BaseClient._make_api_call

    def hang(client: BaseClient, name: str, params: dict[str, Any]) -> Any:
        if name == operation:
            print(f"hanging {name}", flush=True)
            threading.Event().wait()
        return make_api_call(client, name, params)

    BaseClient._make_api_call = hang  # type: ignore[method-assign]


def main() -> None:
    if operation := os.environ.get("CHILD_HANG_ON"):
        _hang_on(operation)
    handler = load_handler(REPO / "functions" / "cancel_worker", "app.lambda_handler")
    timeout = float(os.environ.get("CHILD_TIMEOUT_SECONDS", "60"))
    event = json.load(sys.stdin)
    result = handler(event, LocalLambdaContext(function_name="CancelWorker", timeout_seconds=timeout))
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
