"""The functions' environments (DESIGN.md contracts), typed and validated in one place."""

import os
from collections.abc import Mapping
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from callcancel.models import describe


class _EnvSettings(BaseModel):
    # Each function reads one of these: its validator is built when it does, not when the module loads.
    model_config = ConfigDict(frozen=True, defer_build=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Self:
        """Read the contract's variables; empty values count as unset. Errors name the variable."""
        values = {name: environ[name.upper()] for name in cls.model_fields if environ.get(name.upper())}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise RuntimeError(f"invalid callcancel configuration: {describe(exc).upper()}") from None


class Settings(_EnvSettings):
    """The CancelWorker's environment."""

    dead_letter_queue_url: str = Field(min_length=1)
    cancel_queue_url: str | None = None
    idempotency_table: str | None = None
    deferred_table: str | None = None
    secret_prefix: str = "callcancel"  # noqa: S105  (a name prefix, not a secret)
    max_attempts: int = Field(5, ge=1)
    retry_base_seconds: float = Field(30, ge=0)
    retry_max_seconds: float = Field(900, ge=0)
    ryng_base_url: str = "https://{subdomain}.ryng.in"
    plum_base_url: str = "https://fuse.plumvoice.com"
    provider_timeout_seconds: float = Field(10, gt=0)
    provider_connect_timeout_seconds: float = Field(3.05, gt=0)
    max_in_flight: int = Field(10, ge=1, le=100)
    outcome_table: str | None = None
    event_bus_name: str | None = None
    outcome_retention_days: int = Field(400, ge=1)

    @property
    def attempt_budget_seconds(self) -> float:
        """Time one record may need: a provider call, plus its retry after an auth refresh, plus AWS calls."""
        return 2 * (self.provider_connect_timeout_seconds + self.provider_timeout_seconds) + 2


class PurgeSettings(_EnvSettings):
    """The NightlyPurge's environment: where the plan is, where requests go, where deferred ones wait."""

    purge_plan_parameter: str = Field(min_length=1)
    cancel_queue_url: str = Field(min_length=1)
    deferred_table: str | None = None
    # The worker's outcome records: a deferral left over from an earlier night is not sent again once the worker
    # has received it (see NightlyPurge). Unset: no such check.
    outcome_table: str | None = None
    plan_max_age_seconds: int = Field(60, ge=0)
    # Units of work (chunks of 50 requests) in flight at once, each one AWS call at a time.
    max_in_flight: int = Field(16, ge=1, le=64)
    # Time left at which the purge starts nothing new: enough for the work in flight to finish.
    stop_margin_seconds: float = Field(30, ge=0)

    @property
    def stop_margin_ms(self) -> float:
        return self.stop_margin_seconds * 1000


class DigestSettings(_EnvSettings):
    """The DlqDigest's environment: the queue it reads, the topic it writes, and names for the commands."""

    dead_letter_queue_url: str = Field(min_length=1)
    alert_topic_arn: str = Field(min_length=1)
    stack_name: str = Field(min_length=1)
    aws_region: str = "us-east-1"
    digest_limit: int = Field(100, ge=1, le=10_000)  # 10,000 letters are read in seconds (make bench)
