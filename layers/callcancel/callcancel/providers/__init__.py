"""Provider adapters. Adding a provider means one module here and one entry in `PROVIDERS`."""

from typing import Any

from callcancel.providers.base import ProviderClient, provider_session
from callcancel.providers.plum import PlumClient
from callcancel.providers.ryng import RyngClient

PROVIDERS: dict[str, type[ProviderClient[Any, Any]]] = {client.name: client for client in (RyngClient, PlumClient)}

__all__ = ["PROVIDERS", "PlumClient", "ProviderClient", "RyngClient", "provider_session"]
