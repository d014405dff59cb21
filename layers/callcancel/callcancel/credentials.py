"""Provider credentials from Secrets Manager, through Powertools parameters with its cache.

Records of a batch run concurrently and often share an account. A lock per secret name makes the first
reader fetch while the others wait and then read the cache: one fetch per secret, not one per record.
"""

import threading
from collections import defaultdict
from typing import Any

from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError, TransformParameterError
from botocore.exceptions import ClientError

from callcancel.errors import ConfigError, TransientFailure
from callcancel.models import Credentials, parse_credentials

# Secrets Manager answers that a person has to fix; anything else (throttling, outages) is retried.
_CONFIG_ERROR_CODES = frozenset(
    {"ResourceNotFoundException", "AccessDeniedException", "DecryptionFailure", "InvalidRequestException"}
)


class SecretStore:
    def __init__(self, max_age: int = 300) -> None:
        self._max_age = max_age
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        # Bumped by every forced re-read, so that concurrent auth failures re-read a secret only once.
        self._generations: dict[str, int] = {}

    def get[C: Credentials](self, name: str, model: type[C]) -> tuple[C, int]:
        """The credentials, and the generation to hand back to `refresh` if the provider denies them."""
        with self._lock(name):
            value = self._fetch(name, force=False)
            generation = self._generations.get(name, 0)
        return parse_credentials(model, name, value), generation

    def refresh[C: Credentials](self, name: str, seen: int, model: type[C]) -> C:
        """Re-read the secret, bypassing the cache, unless another record already did since `seen`."""
        with self._lock(name):
            generation = self._generations.get(name, 0)
            value = self._fetch(name, force=generation == seen)
            if generation == seen:
                self._generations[name] = generation + 1
        return parse_credentials(model, name, value)

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[name]

    def _fetch(self, name: str, *, force: bool) -> Any:
        try:
            return parameters.get_secret(name, transform="json", max_age=self._max_age, force_fetch=force)
        except TransformParameterError:
            raise ConfigError(f"secret {name} is not valid JSON") from None
        except GetParameterError as exc:
            # Powertools wraps the SDK error; the original is the implicit context.
            cause = exc.__context__
            code = cause.response.get("Error", {}).get("Code", "") if isinstance(cause, ClientError) else ""
            if code in _CONFIG_ERROR_CODES:
                raise ConfigError(f"secret {name} cannot be read: {code}") from None
            raise TransientFailure(f"secret {name} cannot be read now: {code or type(cause).__name__}") from None
