"""Ryng: POST {base}/rest-api/v1/progressive/call/{call_id}/cancel, one call by ID."""

from urllib.parse import quote

from callcancel.errors import AuthDenied, NotFound, Rejected
from callcancel.models import RyngCancel, RyngCredentials
from callcancel.providers.base import ProviderClient

# Ryng reports an unknown call as a 500 with this message; only the message tells it from an outage.
_UNKNOWN_CALL = "call id does not exist"


class RyngClient(ProviderClient[RyngCancel, RyngCredentials]):
    name = "ryng"
    credentials_model = RyngCredentials

    def cancel(self, request: RyngCancel, credentials: RyngCredentials) -> None:
        base = self._base_url.replace("{subdomain}", credentials.subdomain)
        url = f"{base}/rest-api/v1/progressive/call/{quote(request.call_id, safe='')}/cancel"
        token = credentials.access_token.get_secret_value()
        # The docs name the header x-access-token in one place and x-access-key in another: send both.
        answer = self._send("POST", url, headers={"x-access-token": token, "x-access-key": token}, secrets=[token])

        if answer.success:
            if isinstance(answer.body, dict) and answer.body.get("error") is False:
                return
            self._needs_whole_body(answer)
            raise Rejected(
                f"{answer.describe(self.name)} (not a confirmed cancel)",
                http_status=answer.status,
                provider_message=answer.message,
            )
        if answer.status == 403:
            raise AuthDenied(answer.describe(self.name), http_status=403, provider_message=answer.message)
        if answer.status == 500 and (answer.message or "").strip().rstrip(".").casefold() == _UNKNOWN_CALL:
            raise NotFound(answer.describe(self.name), http_status=500, provider_message=answer.message)
        self._unexpected(answer)
