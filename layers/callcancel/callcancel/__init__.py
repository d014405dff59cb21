"""callcancel: cancel pending outbound calls at telephony providers, reliably, from AWS."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callcancel_tools.outcome_record import status
    from callcancel_tools.producer import publish

__version__ = "0.1.0"
__all__ = ["publish", "status"]


def __getattr__(name: str) -> Any:
    # `callcancel.publish(...)` and `callcancel.status(...)` for producers, from callcancel_tools (installed with
    # `pip install callcancel`, never in the Lambda layer), imported on first use.
    if name == "publish":
        from callcancel_tools.producer import publish  # noqa: PLC0415

        return publish
    if name == "status":
        from callcancel_tools.outcome_record import status  # noqa: PLC0415

        return status
    raise AttributeError(f"module 'callcancel' has no attribute {name!r}")
