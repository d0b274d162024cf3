"""Keep API keys out of logs and error messages.

Every error message that leaves a worker, and every line of worker and zygote
output the front logs, passes through `Redactor.scrub`: the configured key is
replaced wherever it appears, and so is anything shaped like a common provider key.

The front learns the key when it hands it to the zygote (`remember`); output
it logs on behalf of processes it started is scrubbed with `process_redactor()`.

URLs the operator configures (an LM endpoint, a Redis URL) may carry
credentials too: a password in the user part, a key in the query. `mask_url`
shows such a URL without them wherever the server names it (status, metrics,
logs), and `url_secrets` gives them to the redactors.
"""

from __future__ import annotations

import re
import urllib.parse

_KEY_SHAPES = re.compile(
    r"(\bsk-[A-Za-z0-9_\-]{6,}|(?i:\bbearer)\s+(?=[A-Za-z0-9._\-]*[\d.])[A-Za-z0-9._\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|(?i:api[_-]?key)[\"']?\s*[:=]\s*[\"']?[^\s\"',]{4,})"
)
MASK = "[redacted]"
_MIN_SECRET_CHARS = 4
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"',]+")
_PLAIN_QUERY_KEYS = frozenset({"db", "protocol", "api-version", "api_version"})  # shown as they are: never secrets


class Redactor:
    def __init__(self, *secrets: str) -> None:
        self._secrets = tuple(s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _KEY_SHAPES.sub(MASK, text)


_remembered: dict[str, None] = {}  # ordered set: every key this process has handed to a child


def remember(*secrets: str) -> None:
    """Scrub these from now on in `process_redactor()` (keys only ever accumulate: scrubbing more is safe)."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_CHARS:
            _remembered[secret] = None


def process_redactor() -> Redactor:
    return Redactor(*_remembered)


def mask_url(url: str) -> str:
    """The URL with its credentials shown as ***: a password in the user part (or a lone user part, where people put
    passwords too), and every query value but a few known to be plain (db, protocol, api-version)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = "&".join(item if item.split("=", 1)[0].lower() in _PLAIN_QUERY_KEYS or "=" not in item
                     else f"{item.split('=', 1)[0]}=***" for item in parts.query.split("&")) if parts.query else ""
    # Not urlunsplit: it turns unix:///path into unix:/path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def mask_urls_in(text: str) -> str:
    """`text` with every URL in it masked (an LM named MODEL@URL, a message quoting an endpoint)."""
    return _URL.sub(lambda found: mask_url(found.group(0)), text) if "://" in text else text


def url_secrets(text: str) -> list[str]:
    """The credentials mask_urls_in hides in `text`: passwords in user parts and query values, for the redactors."""
    secrets = []
    for found in _URL.finditer(text):
        try:
            parts = urllib.parse.urlsplit(found.group(0))
        except ValueError:
            continue
        if "@" in parts.netloc:
            userinfo = parts.netloc.rsplit("@", 1)[0]
            secrets.append(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo)
        secrets += [value for key, value in urllib.parse.parse_qsl(parts.query) if key.lower() not in _PLAIN_QUERY_KEYS]
    return [secret for secret in secrets if len(secret) >= _MIN_SECRET_CHARS]
