"""Credentials out of text that came from outside: provider messages before they are logged, dead-lettered
or mailed.

Two layers. The exact secret values, in every encoding a provider could echo them in, are removed where the
answer is read (the client knows them). Anything token-like is masked too, for secrets we do not know: an
older dead letter in the digest, a token of another account, a provider that echoes a transformed value.
"""

import base64
import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "[masked]"

# Runs of characters that tokens are made of. "/" is left out so that a secret name such as
# callcancel/ryng/acme-2024 reads as three short words, not one token.
_RUN = re.compile(r"[A-Za-z0-9_\-+=.~]{12,}")
_MIN_DIGITS = _MIN_LETTERS = 2


def _token_like(run: str) -> bool:
    # Words (ResourceNotFoundException) and numbers (a Unix time) are left alone; a mix of both is masked.
    return sum(c.isdigit() for c in run) >= _MIN_DIGITS and sum(c.isalpha() for c in run) >= _MIN_LETTERS


def _encodings(secret: str) -> set[str]:
    """The forms a provider could echo a secret in: as sent, as text in a body, or as an HTTP header."""
    raw = secret.encode()
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),  # a path or query encoder keeps "/"
        quote_plus(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),  # some JSON encoders escape the solidus
        html.escape(secret, quote=True),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
    }
    forms |= {form.rstrip("=") for form in forms}
    forms |= {form.lower() for form in forms if "%" in form}  # percent-escapes in either case
    return {form for form in forms if form}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with each secret (in any of its encodings) and each token-like run replaced by MASK."""
    forms = {form for secret in secrets if secret for form in _encodings(secret)}
    if forms:
        # Longest first, so that "email:key" goes before "key" and no piece of a longer form is left behind.
        pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
        text = re.sub(pattern, MASK, text)
    return _RUN.sub(lambda m: MASK if _token_like(m[0]) else m[0], text)
