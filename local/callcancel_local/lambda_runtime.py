"""Just enough of the Lambda runtime to run a handler in-process: its context, and loading it from its code folder."""

import importlib.util
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LocalLambdaContext:
    """The parts of LambdaContext that handlers and Powertools read."""

    function_name: str = "local-function"
    timeout_seconds: float = 60
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    @property
    def function_version(self) -> str:
        return "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000))


def load_handler(code_dir: Path, handler: str) -> Callable[[dict[str, Any], Any], Any]:
    """Import `module.function` from a function's code folder the way Lambda does, as a top-level module.

    Every function's entry module is named `app`, so each is loaded under its own name, not through sys.path.
    """
    module_name, function_name = handler.rsplit(".", 1)
    path = code_dir / f"{module_name.replace('.', '/')}.py"
    spec = importlib.util.spec_from_file_location(f"{code_dir.name}_{module_name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {handler} from {code_dir}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler_function: Callable[[dict[str, Any], Any], Any] = getattr(module, function_name)
    return handler_function
