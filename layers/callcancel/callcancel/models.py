"""The cancel request (the SQS message body) and the provider credentials (the secret), per DESIGN.md."""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from callcancel.errors import ConfigError, InvalidRequest


def _int_as_str(value: Any) -> Any:
    # Producers may send numeric IDs; the path segment is the decimal string.
    if isinstance(value, bool):
        raise ValueError("must be a string or an integer, not a boolean")
    return str(value) if isinstance(value, int) else value


def _not_bool(value: Any) -> Any:
    # In Python True == 1, so Literal[1] alone would accept `"version": true`.
    if isinstance(value, bool):
        raise ValueError("must be the integer 1")
    return value


ProviderId = Annotated[str, BeforeValidator(_int_as_str), StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Account = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Subdomain = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]


class _Cancel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    account: Account
    request_id: RequestId | None = None
    when: Literal["now", "nightly"] = "now"
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None
    version: Annotated[Literal[1], BeforeValidator(_not_bool)] | None = None


class RyngCancel(_Cancel):
    provider: Literal["ryng"]
    call_id: ProviderId

    @property
    def target(self) -> str:
        """What is cancelled, for logs and dead letters."""
        return self.call_id


class PlumCancel(_Cancel):
    provider: Literal["plum"]
    application_id: ProviderId
    deployment_id: ProviderId

    @property
    def target(self) -> str:
        return f"{self.application_id}/{self.deployment_id}"


CancelRequest = Annotated[RyngCancel | PlumCancel, Field(discriminator="provider")]
_cancel_request = TypeAdapter[RyngCancel | PlumCancel](CancelRequest)


def describe(error: ValidationError, *, strip_tag: bool = False) -> str:
    """Name each bad field and say why, never echoing the input (it may hold a credential)."""
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        loc = item["loc"][1:] if strip_tag and len(item["loc"]) > 1 else item["loc"]
        field = ".".join(str(p) for p in loc) or "body"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field, message = "provider", "must be 'ryng' or 'plum'"
        elif item["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def parse_cancel_request(body: str | bytes) -> RyngCancel | PlumCancel:
    """Validate an SQS body; raise `InvalidRequest` naming every bad field."""
    try:
        return _cancel_request.validate_json(body, strict=True)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid cancel request: {describe(exc, strip_tag=True)}") from None


class Credentials(BaseModel):
    # Secrets often carry metadata (rotation notes, owner); only the fields we need are checked.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class RyngCredentials(Credentials):
    subdomain: Subdomain
    access_token: SecretStr = Field(min_length=1)


class PlumCredentials(Credentials):
    email: str = Field(min_length=1)
    developer_key: SecretStr = Field(min_length=1)


def parse_credentials[C: Credentials](model: type[C], secret_name: str, value: Any) -> C:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(f"secret {secret_name} is malformed: {describe(exc)}") from None
