"""The cancel request (the SQS message body) and the provider credentials (the secret), per DESIGN.md."""

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from callcancel.errors import ConfigError, InvalidPurgePlan, InvalidRequest


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


def _field_message(item: ErrorDetails, loc: Sequence[str | int]) -> str:
    field = ".".join(str(p) for p in loc) or "body"
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
        field, message = "provider", "must be 'ryng' or 'plum'"
    elif item["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{field}: {message}"


def describe(error: ValidationError, *, strip_tag: bool = False) -> str:
    """Name each bad field and say why, never echoing the input (it may hold a credential)."""
    return "; ".join(
        _field_message(item, item["loc"][1:] if strip_tag and len(item["loc"]) > 1 else item["loc"])
        for item in error.errors(include_input=False, include_url=False)
    )


def parse_cancel_request(body: str | bytes) -> RyngCancel | PlumCancel:
    """Validate an SQS body; raise `InvalidRequest` naming every bad field."""
    try:
        return _cancel_request.validate_json(body, strict=True)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid cancel request: {describe(exc, strip_tag=True)}") from None


class _PurgeTarget(_Cancel):
    """A cancel request as the purge plan names it: the purge sets `request_id` and carries it out now."""

    # Built on the purge's first use: the worker's cold start never pays for the plan's validators.
    model_config = ConfigDict(defer_build=True)

    @field_validator("when", "request_id", mode="before")
    @classmethod
    def _set_by_the_purge(cls, value: Any) -> Any:
        raise ValueError("not allowed in a purge target (the purge sets it)")


class RyngPurgeTarget(RyngCancel, _PurgeTarget):
    pass


class PlumPurgeTarget(PlumCancel, _PurgeTarget):
    pass


PurgeTarget = Annotated[RyngPurgeTarget | PlumPurgeTarget, Field(discriminator="provider")]


class PurgePlan(BaseModel):
    """The SSM purge plan: `{"targets": [<cancel request without when and request_id>, ...]}`."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, defer_build=True)

    targets: list[PurgeTarget]


def _describe_plan(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        loc = list(item["loc"])
        where = "plan"
        if len(loc) >= 2 and loc[0] == "targets" and isinstance(loc[1], int):
            where = f"target {loc[1]}"
            loc = loc[3:] if len(loc) > 2 and loc[2] in ("ryng", "plum") else loc[2:]
        parts.append(f"{where}: {_field_message(item, loc)}")
    return "; ".join(parts)


def parse_purge_plan(value: Any) -> PurgePlan:
    """Validate the whole plan (already JSON-decoded); raise `InvalidPurgePlan` naming each bad target and field."""
    try:
        return PurgePlan.model_validate(value, strict=True)
    except ValidationError as exc:
        raise InvalidPurgePlan(f"invalid purge plan: {_describe_plan(exc)}") from None


class Credentials(BaseModel):
    # Secrets often carry metadata (rotation notes, owner); only the fields we need are checked.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _header_safe(value: str) -> None:
    # Tokens, keys and emails travel in HTTP headers: requests would fail on non-latin-1 text, and CR/LF or
    # other controls could split a header. Visible ASCII is what real tokens are made of; anything else is
    # a copy-paste accident (a non-breaking space, a smart quote) that a person has to fix.
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("must be visible ASCII characters only (it is sent in an HTTP header)")


def _header_safe_secret(value: SecretStr) -> SecretStr:
    _header_safe(value.get_secret_value())
    return value


def _basic_auth_user(value: str) -> str:
    _header_safe(value)
    if ":" in value:
        raise ValueError("must not contain ':' (basic auth separates the user from the key with it)")
    return value


HeaderSecret = Annotated[SecretStr, Field(min_length=1), AfterValidator(_header_safe_secret)]


class RyngCredentials(Credentials):
    subdomain: Subdomain
    access_token: HeaderSecret


class PlumCredentials(Credentials):
    email: Annotated[str, Field(min_length=1), AfterValidator(_basic_auth_user)]
    developer_key: HeaderSecret


def parse_credentials[C: Credentials](model: type[C], secret_name: str, value: Any) -> C:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(f"secret {secret_name} is malformed: {describe(exc)}") from None
