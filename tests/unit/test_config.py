"""ServerConfig: typed sections built once from defaults < profile < file < env < flags; help and docs from the same declarations."""

from __future__ import annotations

import argparse
import pathlib

import pytest

from dspy_pool.server import config as config_module
from dspy_pool.server.config import ServerConfig, add_flags, build, from_sources, public_view, secrets_of

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_flags(p)
    return p


def sources(file=None, env=None, flags=None, profile=None) -> ServerConfig:
    return from_sources(profile or {}, file or {}, env or {}, flags or {})


def test_defaults_when_no_sources():
    """With no profile, file, env or flags, the declared defaults apply."""
    assert sources() == ServerConfig()


def test_precedence_profile_file_env_flags():
    """Each source beats the ones below it: flags > env > file > profile."""
    assert sources(profile={"max_queue": 3}).pool.max_queue == 3
    assert sources(profile={"max_queue": 3}, file={"max_queue": 4}).pool.max_queue == 4
    assert sources(file={"max_queue": 4}, env={"DSPY_POOL_MAX_QUEUE": "6"}).pool.max_queue == 6
    assert sources(file={"max_queue": 4}, env={"DSPY_POOL_MAX_QUEUE": "6"}, flags={"max_queue": "8"}).pool.max_queue == 8


def test_none_flag_does_not_override():
    """A flag left at None (not given) keeps the lower-precedence value."""
    assert sources(env={"DSPY_POOL_MAX_QUEUE": "5"}, flags={"max_queue": None}).pool.max_queue == 5


def test_file_keys_flat_with_dashes_or_in_section_tables():
    """A TOML file may use flat keys (dashes allowed) or [section] tables with the section's own names."""
    assert sources(file={"max-queue": 7}).pool.max_queue == 7
    nested = sources(file={"pool": {"max_queue": 9}, "lm": {"api_base": "http://127.0.0.1:1/v1"}, "sessions": {"ttl_s": 5}})
    assert (nested.pool.max_queue, nested.lm.api_base, nested.sessions.ttl_s) == (9, "http://127.0.0.1:1/v1", 5.0)
    with pytest.raises(ValueError, match="unknown setting 'nope' in \\[pool\\]"):
        sources(file={"pool": {"nope": 1}})


def test_values_are_coerced_to_field_types():
    """String values from env and flags become the field's int or float."""
    config = sources(env={"DSPY_POOL_DEFAULT_DEADLINE_S": "2.5"}, flags={"worker_concurrency": "16"})
    assert config.server.default_deadline_s == 2.5
    assert config.pool.worker_concurrency == 16


def test_unrelated_env_ignored():
    """Variables without the prefix or for no setting are ignored."""
    assert sources(env={"WORKERS": "9", "DSPY_POOL_NOPE": "1"}) == ServerConfig()


def test_unknown_file_key_rejected():
    """An unknown key in the config file is a ValueError naming it."""
    with pytest.raises(ValueError, match="unknown setting 'wrokers'"):
        sources(file={"wrokers": 2})


def test_a_misspelt_file_key_gets_a_suggestion():
    """A typo names the nearest setting, in a [section] among that section's names; a flat key says how flat names go."""
    with pytest.raises(ValueError, match="unknown setting 'workrs' in \\[pool\\].*did you mean 'workers'"):
        sources(file={"pool": {"workrs": 3}})
    with pytest.raises(ValueError, match="did you mean 'lm_api_key'.*flag's name with underscores"):
        sources(file={"lm_api_kye": "x"})


def test_uncoercible_value_rejected():
    """A value that cannot be read as the setting's type is a ValueError naming it."""
    with pytest.raises(ValueError, match="workers: cannot read 'many' as int"):
        sources(env={"DSPY_POOL_WORKERS": "many"})


def test_invalid_values_list_every_problem():
    """Out-of-range values are one ValueError listing each problem, across sections."""
    with pytest.raises(ValueError) as info:
        sources(flags={"workers": "0", "log_format": "xml", "default_deadline_s": "-1"})
    message = str(info.value)
    assert "workers must be >= 1" in message
    assert "log_format must be one of console, json" in message
    assert "default_deadline_s must be >= 0.001" in message


def test_fractional_value_for_int_field_rejected():
    """A fractional number for an int setting is rejected rather than truncated."""
    with pytest.raises(ValueError):
        sources(file={"workers": 2.7})


def test_programs_from_env_file_and_repeated_flag():
    """programs: a comma list in env, a TOML list, or a repeated flag; all become a tuple."""
    assert sources(env={"DSPY_POOL_PROGRAMS": "my.rag,other.mod,"}).pool.programs == ("my.rag", "other.mod")
    assert sources(file={"programs": ["a", "b"]}).pool.programs == ("a", "b")
    args = parser().parse_args(["--programs", "x", "--programs", "y"])
    assert sources(flags={"programs": args.programs}).pool.programs == ("x", "y")


def test_api_key_from_env_never_in_repr_or_public_view():
    """The key comes from DSPY_POOL_LM_API_KEY; repr and public_view never show it."""
    config = sources(env={"DSPY_POOL_LM_API_KEY": "sk-live-123456"})
    assert config.lm.api_key == "sk-live-123456"
    assert "sk-live-123456" not in repr(config)
    view = public_view(build(lm_api_key="sk-live-123456", workers=3))
    assert view["lm"]["api_key"] == "[set]" and view["pool"]["workers"] == 3
    assert "sk-live-123456" not in str(view)
    assert public_view(ServerConfig())["lm"]["api_key"] == ""


def test_credentials_in_configured_urls_are_masked_in_public_view_and_scrubbed_from_logs():
    """A Redis password, an LM endpoint's user password and query key, a MODEL@URL entry's: masked in the view the
    start-up line logs, and handed to the log redactor (secrets_of)."""
    config = build(state="redis://:redispw1@127.0.0.1:6379/0", lm_api_base="http://ops:lmpass1@llm:8000/v1?key=qkey1",
                   fallback_lms=("small@http://u:fbpass1@llm2/v1",), lm_api_key="sk-live-123456")
    view = str(public_view(config))
    for secret in ("redispw1", "lmpass1", "qkey1", "fbpass1", "sk-live-123456"):
        assert secret not in view
        assert secret in secrets_of(config)
    assert "redis://:***@127.0.0.1:6379/0" in view and "http://ops:***@llm:8000/v1?key=***" in view


def test_no_api_key_flag_and_every_other_setting_has_one():
    """Every declared setting but the key has a flag defaulting to None; --lm-api-key does not exist."""
    args = vars(parser().parse_args([]))
    expected = {s.name for s in config_module.settings() if not s.secret} | {"config", "profile"}
    assert set(args) == expected and all(value is None for value in args.values())
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser().parse_args(["--lm-api-key", "x"])


def test_help_says_meaning_unit_choices_and_effective_default():
    """--help text comes from the declarations: meaning, unit, choices, the profile's value and the built-in one."""
    text = parser().format_help()
    assert "calls one worker runs at once" in text
    assert "[s]" in text and "choices: console, json" in text
    assert "default: 8 (profile balanced; built in 0)" in " ".join(text.split())


def test_workers_alone_means_exactly_that_many():
    """--workers 2 with the default profile is a fixed pool of 2, not the profile's autoscaling 2..8."""
    balanced = config_module.load_profile("balanced")
    assert config_module.worker_bounds(sources(profile=balanced)) == (2, 2, 8)
    assert config_module.worker_bounds(sources(profile=balanced, flags={"workers": "2"})) == (2, 2, 2)
    assert config_module.worker_bounds(sources(profile=balanced, flags={"workers": "2", "max_workers": "6"})) == (2, 2, 6)


def test_every_shipped_profile_builds_a_valid_config():
    """Each profile file parses and yields a valid ServerConfig."""
    names = config_module.profile_names()
    assert {"balanced", "high-throughput", "low-latency", "resource-constrained", "development"} <= set(names)
    for name in names:
        sources(profile=config_module.load_profile(name))


def test_profile_is_overridden_by_flags():
    """--profile low-latency sets its values; a flag still wins over the profile."""
    loaded = config_module.load(parser().parse_args(["--profile", "low-latency", "--max-queue", "7"]), environ={})
    assert loaded.pool.worker_concurrency == 16 and loaded.pool.max_queue == 7


def test_unknown_profile_is_an_error():
    """A profile name that ships no file is refused with the known names."""
    with pytest.raises(ValueError, match="balanced"):
        config_module.load(parser().parse_args(["--profile", "turbo"]), environ={})


def test_readme_configuration_table_matches_the_declarations():
    """The README's table is generated from the declarations (scripts/gen_config_docs.py); it must not drift."""
    text = README.read_text()
    begin, end = "<!-- config-table:begin -->\n", "<!-- config-table:end -->"
    assert begin in text and end in text
    assert text.split(begin, 1)[1].split(end, 1)[0] == config_module.markdown_table(), "run: python scripts/gen_config_docs.py"


@pytest.mark.parametrize("listen", ["127.0.0.1", "localhost:99999", "::1:50051", "unix:", "127.0.0.1:port", ":50051"])
def test_listen_addresses_grpc_would_silently_bend_are_refused(listen):
    """A listen address without a port, with a port past 65535, or an unbracketed IPv6 host is a config error."""
    with pytest.raises(ValueError, match="listen"):
        build(listen=listen)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:50051", "[::1]:50051", "unix:/tmp/dspy-pool.sock", "localhost:65535"])
def test_listen_addresses_accepted(listen):
    """HOST:PORT, [IPv6]:PORT and unix:PATH are accepted as given."""
    assert build(listen=listen).server.listen == listen


def test_every_setting_is_checked_before_any_child_starts():
    """validate() builds every settings object: a bad value fails there, not after the zygote runs."""
    from dspy_pool.server.app import validate

    with pytest.raises(ValueError, match="breaker_failure_rate"):
        build(breaker_failure_rate=1.5)
    with pytest.raises(ValueError, match="result_cache_entries"):
        build(result_cache_entries=0)
    with pytest.raises(ValueError, match="invalid configuration"):
        validate(build(breaker_window=10, breaker_minimum_calls=20))
    validate(ServerConfig())


def test_cli_refuses_a_bad_setting_without_starting_anything(capsys):
    """`dspy-pool serve --result-cache-entries 0` exits 2 with the message, before the sim LM or zygote exist."""
    from dspy_pool import cli

    assert cli.main(["serve", "--result-cache-entries", "0"]) == 2
    assert "result_cache_entries" in capsys.readouterr().err


def test_a_provider_model_without_a_key_is_warned_about_at_start_up():
    """warn_if_keyless names DSPY_POOL_LM_API_KEY for a provider model with no key, and stays quiet for sim and keyed LMs."""
    from structlog.testing import capture_logs

    from dspy_pool.server.app import warn_if_keyless

    with capture_logs() as logs:
        warn_if_keyless(build(lm="openai/gpt-4o-mini"))
        warn_if_keyless(build(lm="sim"))
        warn_if_keyless(build(lm="openai/gpt-4o-mini", lm_api_key="sk-x"))
    assert [entry["event"] for entry in logs] == ["lm_api_key_missing"]
    assert "DSPY_POOL_LM_API_KEY" in logs[0]["hint"] and logs[0]["log_level"] == "warning"


def test_lm_call_options_are_an_allow_list_that_never_names_the_operators_lm():
    """lm_call_options reads from flags or env as a comma list; an entry naming api_base, model or a key is refused."""
    config = sources(env={"DSPY_POOL_LM_CALL_OPTIONS": "temperature=0:1,reasoning_effort=low|high"})
    assert config.lm.call_options == ("temperature=0:1", "reasoning_effort=low|high")
    assert "temperature=0:2" in ServerConfig().lm.call_options
    for entry in ("api_base=a|b", "api_key=0:1", "temperature"):
        with pytest.raises(ValueError, match="lm_call_options|operator"):
            build(lm_call_options=(entry,))


@pytest.mark.parametrize("settings, says", [
    ({"default_deadline_s": float("nan")}, "default_deadline_s must be a finite number"),
    ({"drain_grace_s": float("nan")}, "drain_grace_s must be a finite number"),
    ({"session_ttl_s": float("inf")}, "session_ttl_s must be a finite number"),
    ({"max_queue": 10**20}, "max_queue must be <= 2147483647"),
    ({"max_message_bytes": 3_000_000_000}, "max_message_bytes must be <= 1073741824"),
    ({"default_fallback": ("cache", "statik")}, "default_fallback: unknown fallback step 'statik'"),
    ({"default_fallback": ("fail", "cache")}, "'fail' must be the last step"),
], ids=["nan-deadline", "nan-grace", "inf-ttl", "huge-int", "huge-message", "unknown-step", "fail-first"])
def test_settings_that_would_fail_later_are_refused_naming_the_setting(settings, says):
    """NaN passed every bound check, a huge int failed deep in grpc after children started, a default chain's typo
    failed every registration: all refused at start-up."""
    with pytest.raises(ValueError) as refused:
        build(**settings)
    assert says in str(refused.value)


def test_the_default_deadline_is_capped_at_the_maximum_like_any_other():
    """--max-deadline-s 5 with the default 30: a call that sets no deadline gets 5 s (it ran 30 s, past the cap)."""
    assert build(max_deadline_s=5.0).server.effective_default_deadline_s == 5.0
    assert build(max_deadline_s=600.0, default_deadline_s=30.0).server.effective_default_deadline_s == 30.0


def test_a_config_file_that_is_not_toml_is_named_in_the_error(tmp_path):
    """`--config bad.toml`: the error names the file (it said only "Invalid value (at end of document)")."""
    import argparse

    bad = tmp_path / "bad.toml"
    bad.write_text("workers = \n")
    with pytest.raises(ValueError, match=rf"{bad}: not valid TOML"):
        config_module.load(argparse.Namespace(config=str(bad)), environ={})


def test_a_section_name_given_a_value_says_to_write_a_table():
    with pytest.raises(ValueError, match=r"'server' in the config file names a section: write it as a table, \[server\]"):
        sources(file={"server": 5})


def test_a_large_byte_size_is_still_a_valid_setting():
    """The C-int bound is for counts: an 8 GiB store-level cache is a fine setting."""
    assert build(result_cache_store_max_bytes=8 << 30).resilience.result_cache_store_max_bytes == 8 << 30
