"""ServerConfig: one typed object from defaults < file < env < flags."""

from __future__ import annotations

import argparse

import pytest

from dspy_pool.server.config import ServerConfig, add_flags, from_sources, public_view


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_flags(p)
    return p


def test_defaults_when_no_sources():
    """With no file, env or flags, the dataclass defaults apply."""
    assert from_sources({}, {}, {}) == ServerConfig()


def test_file_overrides_defaults():
    """A file value replaces the default."""
    assert from_sources({"workers": 4}, {}, {}).workers == 4


def test_env_overrides_file():
    """A DSPY_POOL_* variable beats the file."""
    assert from_sources({"workers": 4}, {"DSPY_POOL_WORKERS": "6"}, {}).workers == 6


def test_flags_override_env():
    """A flag beats the environment and the file."""
    assert from_sources({"workers": 4}, {"DSPY_POOL_WORKERS": "6"}, {"workers": "8"}).workers == 8


def test_none_flag_does_not_override():
    """A flag left at None (not given) keeps the lower-precedence value."""
    assert from_sources({}, {"DSPY_POOL_MAX_QUEUE": "5"}, {"max_queue": None}).max_queue == 5


def test_file_keys_may_use_dashes():
    """File keys may be written with dashes as on the command line."""
    assert from_sources({"max-queue": 7}, {}, {}).max_queue == 7


def test_values_are_coerced_to_field_types():
    """String values from env and flags become the field's int or float."""
    config = from_sources({}, {"DSPY_POOL_DEFAULT_DEADLINE_S": "2.5"}, {"worker_concurrency": "16"})
    assert config.default_deadline_s == 2.5
    assert config.worker_concurrency == 16


def test_unrelated_env_ignored():
    """Variables without the prefix or for no field are ignored."""
    assert from_sources({}, {"WORKERS": "9", "DSPY_POOL_NOPE": "1"}, {}) == ServerConfig()


def test_unknown_file_key_rejected():
    """An unknown key in the config file is a ValueError naming it."""
    with pytest.raises(ValueError, match="unknown setting 'wrokers'"):
        from_sources({"wrokers": 2}, {}, {})


def test_uncoercible_value_rejected():
    """A value that cannot be read as the field's type is a ValueError naming the field."""
    with pytest.raises(ValueError, match="workers: cannot read 'many' as int"):
        from_sources({}, {"DSPY_POOL_WORKERS": "many"}, {})


def test_invalid_values_list_every_problem():
    """Out-of-range values are a ValueError listing each problem."""
    with pytest.raises(ValueError) as info:
        from_sources({}, {}, {"workers": "0", "log_format": "xml", "default_deadline_s": "-1"})
    message = str(info.value)
    assert "workers must be >= 1" in message
    assert "log_format must be console or json" in message
    assert "default_deadline_s must be > 0" in message


def test_fractional_value_for_int_field_rejected():
    """A fractional number for an int setting is rejected rather than truncated."""
    with pytest.raises(ValueError):
        from_sources({"workers": 2.7}, {}, {})


def test_programs_from_env_comma_list():
    """DSPY_POOL_PROGRAMS is a comma-separated list; empty items are dropped."""
    assert from_sources({}, {"DSPY_POOL_PROGRAMS": "my.rag,other.mod,"}, {}).programs == ("my.rag", "other.mod")


def test_programs_from_file_list_and_repeated_flag():
    """programs from a TOML list or a repeated flag becomes a tuple."""
    assert from_sources({"programs": ["a", "b"]}, {}, {}).programs == ("a", "b")
    args = parser().parse_args(["--programs", "x", "--programs", "y"])
    assert from_sources({}, {}, {"programs": args.programs}).programs == ("x", "y")


def test_api_key_from_env():
    """The API key can come from DSPY_POOL_LM_API_KEY."""
    assert from_sources({}, {"DSPY_POOL_LM_API_KEY": "sk-live-123456"}, {}).lm_api_key == "sk-live-123456"


def test_api_key_not_in_repr():
    """repr() of the config never shows the API key."""
    assert "sk-live-123456" not in repr(ServerConfig(lm_api_key="sk-live-123456"))


def test_public_view_hides_api_key():
    """public_view replaces a set key with a marker and leaves other settings."""
    view = public_view(ServerConfig(lm_api_key="sk-live-123456", workers=3))
    assert view["lm_api_key"] == "[set]"
    assert view["workers"] == 3
    assert "sk-live-123456" not in str(view)
    assert public_view(ServerConfig())["lm_api_key"] == ""


def test_flags_parse_into_from_sources():
    """Parsed flags feed from_sources directly."""
    args = parser().parse_args(["--workers", "3", "--log-format", "json"])
    config = from_sources({}, {}, vars(args))
    assert (config.workers, config.log_format) == (3, "json")


def test_no_api_key_flag():
    """There is no --lm-api-key flag, so the key never shows in ps."""
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser().parse_args(["--lm-api-key", "x"])


def test_every_other_field_has_a_flag_defaulting_to_none():
    """Every setting except the API key has a flag whose default is None."""
    args = vars(parser().parse_args([]))
    expected = {f for f in ServerConfig.__dataclass_fields__ if f != "lm_api_key"} | {"config", "profile"}
    assert set(args) == expected
    assert all(value is None for value in args.values())


def test_every_shipped_profile_builds_a_valid_config():
    """Each profile file parses and yields a valid ServerConfig."""
    from dspy_pool.server import config as config_module

    names = config_module.profile_names()
    assert {"balanced", "high-throughput", "low-latency", "resource-constrained", "development"} <= set(names)
    for name in names:
        config_module.from_sources(config_module.load_profile(name), {}, {})


def test_profile_is_overridden_by_flags():
    """--profile low-latency sets its values; a flag still wins over the profile."""
    import argparse

    from dspy_pool.server import config as config_module

    parser = argparse.ArgumentParser()
    config_module.add_flags(parser)
    loaded = config_module.load(parser.parse_args(["--profile", "low-latency", "--max-queue", "7"]), environ={})
    assert loaded.worker_concurrency == 16 and loaded.max_queue == 7


def test_unknown_profile_is_an_error():
    """A profile name that ships no file is refused with the known names."""
    import argparse

    import pytest

    from dspy_pool.server import config as config_module

    parser = argparse.ArgumentParser()
    config_module.add_flags(parser)
    with pytest.raises(ValueError, match="balanced"):
        config_module.load(parser.parse_args(["--profile", "turbo"]), environ={})


@pytest.mark.parametrize("listen", ["127.0.0.1", "localhost:99999", "::1:50051", "unix:", "127.0.0.1:port", ":50051"])
def test_listen_addresses_grpc_would_silently_bend_are_refused(listen):
    """A listen address without a port, with a port past 65535, or an unbracketed IPv6 host is a config error."""
    with pytest.raises(ValueError, match="listen"):
        ServerConfig(listen=listen)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:50051", "[::1]:50051", "unix:/tmp/dspy-pool.sock", "localhost:65535"])
def test_listen_addresses_accepted(listen):
    """HOST:PORT, [IPv6]:PORT and unix:PATH are accepted as given."""
    assert ServerConfig(listen=listen).listen == listen


def test_every_setting_is_checked_before_any_child_starts():
    """validate() builds every settings object: a bad breaker or scaler value fails there, not after the zygote runs."""
    from dspy_pool.server.app import validate

    with pytest.raises(ValueError, match="invalid configuration"):
        validate(ServerConfig(breaker_failure_rate=1.5))
    with pytest.raises(ValueError, match="result_cache_entries"):
        ServerConfig(result_cache_entries=0)
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
        warn_if_keyless(ServerConfig(lm="openai/gpt-4o-mini"))
        warn_if_keyless(ServerConfig(lm="sim"))
        warn_if_keyless(ServerConfig(lm="openai/gpt-4o-mini", lm_api_key="sk-x"))
    assert [entry["event"] for entry in logs] == ["lm_api_key_missing"]
    assert "DSPY_POOL_LM_API_KEY" in logs[0]["hint"] and logs[0]["log_level"] == "warning"
