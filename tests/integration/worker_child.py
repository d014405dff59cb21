"""One worker invocation in a process of its own, for tests that kill it the way Lambda does (SIGKILL).

Reads a Lambda SQS event (JSON) on stdin and runs the real handler on it, with the environment it was
given. `CHILD_HANG_ON=<Operation>` makes that AWS operation hang forever, after printing `hanging <Operation>`
on stdout: the parent then knows exactly which step the kill interrupts. `<Operation>#<n>` hangs its n-th call
instead of its first, and several, separated by spaces, hang each (the first one reached is printed first).
"""

import json
import os
import sys
import threading
from collections import Counter
from typing import Any

from botocore.client import BaseClient

from callcancel_local.lambda_runtime import LocalLambdaContext, load_handler
from tests.support import REPO


def _hang_on(operations: str) -> None:
    make_api_call = BaseClient._make_api_call
    hang_at = {name: int(n or 1) for name, _, n in (o.partition("#") for o in operations.split())}
    calls: Counter[str] = Counter()
    counting = threading.Lock()

    def hang(client: BaseClient, name: str, params: dict[str, Any]) -> Any:
        with counting:
            calls[name] += 1
            reached = calls[name] == hang_at.get(name)
        if reached:
            with counting:  # one whole line at a time: two operations may hang at once
                sys.stdout.write(f"hanging {name}\n")
                sys.stdout.flush()
            threading.Event().wait()
        return make_api_call(client, name, params)

    BaseClient._make_api_call = hang  # type: ignore[method-assign]


def main() -> None:
    if operations := os.environ.get("CHILD_HANG_ON"):
        _hang_on(operations)
    handler = load_handler(REPO / "functions" / "cancel_worker", "app.lambda_handler")
    timeout = float(os.environ.get("CHILD_TIMEOUT_SECONDS", "60"))
    event = json.load(sys.stdin)
    result = handler(event, LocalLambdaContext(function_name="CancelWorker", timeout_seconds=timeout))
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
