"""Plum Fuse: DELETE {base}/api/apps/{application_id}/{deployment_id}/cancel, all pending calls of a deployment."""

from urllib.parse import quote

from callcancel.errors import AuthDenied, NotFound
from callcancel.models import PlumCancel, PlumCredentials
from callcancel.providers.base import ProviderClient


class PlumClient(ProviderClient[PlumCancel, PlumCredentials]):
    name = "plum"
    credentials_model = PlumCredentials

    def cancel(self, request: PlumCancel, credentials: PlumCredentials) -> None:
        app, deployment = quote(request.application_id, safe=""), quote(request.deployment_id, safe="")
        email, key = credentials.email, credentials.developer_key.get_secret_value()
        answer = self._send(
            "DELETE",
            f"{self._base_url}/api/apps/{app}/{deployment}/cancel",
            auth=(email, key),
            # "email:key" too: its base64 is the Authorization header, which a provider may echo whole.
            secrets=[email, key, f"{email}:{key}"],
        )
        # The docs promise 202; any 2xx is a success we do not want to dead-letter.
        if answer.success:
            return
        if answer.status in (401, 403):
            raise AuthDenied(answer.describe(self.name), http_status=answer.status, provider_message=answer.message)
        if answer.status == 404:
            raise NotFound(answer.describe(self.name), http_status=404, provider_message=answer.message)
        self._unexpected(answer)
