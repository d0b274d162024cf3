"""Redactor: configured secrets and key-shaped strings never reach logs."""

from __future__ import annotations


from dspy_pool import redact
from dspy_pool.redact import MASK, Redactor


def test_configured_secret_is_scrubbed():
    """The configured key is replaced wherever it appears."""
    out = Redactor("hunter2-secret").scrub("auth failed for hunter2-secret, retry hunter2-secret")
    assert "hunter2-secret" not in out
    assert out.count(MASK) == 2


def test_short_secret_is_ignored():
    """A configured secret under 4 characters is not used (it would mask ordinary text)."""
    assert Redactor("ab").scrub("a cab ride") == "a cab ride"


def test_sk_style_key_is_scrubbed():
    """An OpenAI-style sk- key is masked even when not configured."""
    out = Redactor().scrub("Incorrect API key provided: sk-proj-abc123XYZ789")
    assert "sk-proj-abc123XYZ789" not in out
    assert MASK in out


def test_bearer_token_is_scrubbed():
    """A Bearer token in a header dump is masked."""
    out = Redactor().scrub("Authorization: Bearer eyJhbGciOi.J9.abc-def")
    assert "eyJhbGciOi" not in out
    assert out.startswith("Authorization: ")


def test_api_key_assignment_is_scrubbed():
    """api_key=... and api-key: "..." forms are masked."""
    out = Redactor().scrub('call(api_key=abcd1234efgh) headers {"api-key": "zzzz9999"}')
    assert "abcd1234efgh" not in out
    assert "zzzz9999" not in out


def test_google_style_key_is_scrubbed():
    """An AIza... Google API key is masked."""
    key = "AIza" + "B" * 30
    assert key not in Redactor().scrub(f"key={key}&q=1")


def test_ordinary_text_is_unchanged():
    """Text without anything key-shaped passes through untouched."""
    text = "The answer is 42; the worker took 120 ms. No api key was needed."
    assert Redactor("s3cr3t-value").scrub(text) == text


def test_hyphenated_words_ending_in_sk_are_unchanged():
    """Ordinary hyphenated words such as 'risk-averse' are not mistaken for sk- keys."""
    text = "a risk-averse task-manager"
    assert Redactor().scrub(text) == text


def test_a_url_loses_its_password_and_query_values_but_keeps_where_it_points():
    assert redact.mask_url("https://ops:hunter2@llm.internal:8443/v1?api-key=Q1&api-version=2024-06-01") == \
        "https://ops:***@llm.internal:8443/v1?api-key=***&api-version=2024-06-01"
    assert redact.mask_url("http://tokenonly@llm/v1") == "http://***@llm/v1"
    assert redact.mask_url("http://llm.internal:8000/v1") == "http://llm.internal:8000/v1"


def test_urls_inside_text_are_masked_and_their_secrets_listed_for_the_redactors():
    text = "gpt-4o@https://u:pw-secret@proxy/v1?key=abcd1234"
    assert redact.mask_urls_in(text) == "gpt-4o@https://u:***@proxy/v1?key=***"
    assert redact.url_secrets(text) == ["pw-secret", "abcd1234"]
    assert redact.mask_urls_in("openai/gpt-4o-mini") == "openai/gpt-4o-mini"
