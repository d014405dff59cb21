"""A secret whose values an HTTP header cannot carry is `config` when it is read, never a retried send."""

from typing import Any

import pytest

from callcancel.errors import ConfigError
from callcancel.models import PlumCredentials, RyngCredentials, parse_credentials

NOT_HEADER_SAFE = {
    "euro sign (not latin-1)": "tok\u20acen",
    "e acute (latin-1, not ascii)": "tok\u00e9n",
    "crlf (header injection)": "tok\r\nX-Injected: 1",
    "lf": "tok\nen",
    "nul": "tok\x00en",
    "tab": "tok\ten",
    "space": "tok en",
    "non-breaking space": "tok\u00a0en",
    "escape": "tok\x1b[31m",
}


@pytest.mark.parametrize("value", NOT_HEADER_SAFE.values(), ids=NOT_HEADER_SAFE.keys())
@pytest.mark.parametrize(
    ("model", "secret"),
    [
        (RyngCredentials, lambda v: {"subdomain": "acme", "access_token": v}),
        (PlumCredentials, lambda v: {"email": "ops@acme.example", "developer_key": v}),
        (PlumCredentials, lambda v: {"email": f"ops{v}@acme.example", "developer_key": "key"}),
    ],
    ids=["ryng token", "plum key", "plum email"],
)
def test_a_value_no_header_can_carry_is_config_and_not_echoed(model: Any, secret: Any, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_credentials(model, "callcancel/x/acme", secret(value))
    assert value not in caught.value.reason
    assert "HTTP header" in caught.value.reason


def test_a_colon_in_the_plum_email_is_config() -> None:
    # Basic auth splits user from password at the first ':'; Plum would see another user.
    with pytest.raises(ConfigError, match="email: must not contain ':'"):
        parse_credentials(
            PlumCredentials, "callcancel/plum/acme", {"email": "ops:x@acme.example", "developer_key": "k"}
        )


def test_real_tokens_and_keys_are_accepted() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc-_+/=~!#$%&*"
    ryng = parse_credentials(RyngCredentials, "n", {"subdomain": "acme", "access_token": token})
    plum = parse_credentials(PlumCredentials, "n", {"email": "ops+x@acme.example", "developer_key": "a:b:c"})
    assert ryng.access_token.get_secret_value() == token
    assert plum.developer_key.get_secret_value() == "a:b:c"  # a ':' in the password is fine in basic auth
