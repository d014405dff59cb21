"""Carry out one cancel at its provider."""

from collections.abc import Mapping
from typing import Any

from callcancel.credentials import SecretStore
from callcancel.errors import AuthDenied
from callcancel.models import PlumCancel, RyngCancel
from callcancel.observability import logger
from callcancel.providers import ProviderClient


class Canceller:
    def __init__(self, clients: Mapping[str, ProviderClient[Any, Any]], secrets: SecretStore, secret_prefix: str):
        self._clients = clients
        self._secrets = secrets
        self._secret_prefix = secret_prefix

    def cancel(self, request: RyngCancel | PlumCancel) -> None:
        """Return when the provider confirmed the cancel; raise a typed failure otherwise."""
        client = self._clients[request.provider]
        name = f"{self._secret_prefix}/{request.provider}/{request.account}"
        credentials, generation = self._secrets.get(name, client.credentials_model)
        try:
            client.cancel(request, credentials)
        except AuthDenied:
            # Most often the secret was rotated and our cached copy is stale: re-read it and try once more.
            logger.info("provider denied the credentials; re-reading the secret", extra={"secret": name})
            credentials = self._secrets.refresh(name, generation, client.credentials_model)
            client.cancel(request, credentials)
