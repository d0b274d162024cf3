"""Keep API keys out of logs and error messages.

Every error message that leaves a worker, and every line of worker and zygote
output the front logs, passes through `Redactor.scrub`: the configured key is
replaced wherever it appears, and so is anything shaped like a common provider key.

The front learns the key when it hands it to the zygote (`remember`); output
it logs on behalf of processes it started is scrubbed with `process_redactor()`.
"""

from __future__ import annotations

import re

_KEY_SHAPES = re.compile(
    r"(\bsk-[A-Za-z0-9_\-]{6,}|(?i:\bbearer)\s+(?=[A-Za-z0-9._\-]*[\d.])[A-Za-z0-9._\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|(?i:api[_-]?key)[\"']?\s*[:=]\s*[\"']?[^\s\"',]{4,})"
)
MASK = "[redacted]"
_MIN_SECRET_CHARS = 4


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
