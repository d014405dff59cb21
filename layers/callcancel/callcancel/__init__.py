"""callcancel: cancel pending outbound calls at telephony providers, reliably, from AWS."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callcancel.producer import publish

__version__ = "0.1.0"
__all__ = ["publish"]


def __getattr__(name: str) -> Any:
    # `callcancel.publish(...)` for producers, imported on first use: the Lambda functions never pay for it.
    if name == "publish":
        from callcancel.producer import publish  # noqa: PLC0415

        return publish
    raise AttributeError(f"module 'callcancel' has no attribute {name!r}")
