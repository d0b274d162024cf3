"""Module kinds declare their options; options and LM call options are typed and bounded (dspy_pool.kinds, dspy_pool.options)."""

import pytest

from dspy_pool import kinds
from dspy_pool.errors import InvalidArgument
from dspy_pool.options import DEFAULT_LM_CALL_OPTIONS, Option, check_options, parse_lm_rule, parse_lm_rules


def test_an_int_option_takes_whole_numbers_as_structs_send_them():
    """3.0 (a Struct number) becomes 3; 3.5, true, "3" and null are refused, naming the option."""
    option = Option(int, min=1, max=10)
    assert option.check("k", 3.0) == 3 and isinstance(option.check("k", 3.0), int)
    for bad in (3.5, True, "3", None):
        with pytest.raises(InvalidArgument, match="'k'"):
            option.check("k", bad)


def test_bounds_and_choices_are_enforced():
    """Values outside min/max or not among the choices are refused."""
    with pytest.raises(InvalidArgument, match="maximum"):
        Option(float, min=0, max=2).check("temperature", 2.5)
    with pytest.raises(InvalidArgument, match="minimum"):
        Option(float, min=0, max=2).check("temperature", -0.1)
    with pytest.raises(InvalidArgument, match="not one of"):
        Option(str, choices=("low", "high")).check("effort", "max")
    with pytest.raises(InvalidArgument, match="number"):
        Option(float).check("temperature", float("nan"))


def test_an_option_with_a_bad_declaration_fails_at_registration_time():
    """A default outside the declared bounds, or an unsupported type, is the operator's error, raised at once."""
    with pytest.raises(ValueError, match="minimum"):
        Option(int, default=0, min=1)
    with pytest.raises(ValueError):
        Option(list)
    with pytest.raises(ValueError):
        Option(int, min=5, max=1)


def test_check_options_refuses_undeclared_names_and_fills_defaults():
    """Unknown names are INVALID_ARGUMENT listing what is accepted; declared defaults fill what was left out."""
    declared = {"k": Option(int, default=3, min=1, max=10), "mode": Option(str, choices=("a", "b"))}
    assert check_options({}, declared, "module option") == {"k": 3}
    assert check_options({"mode": "b"}, declared, "module option") == {"k": 3, "mode": "b"}
    with pytest.raises(InvalidArgument, match=r"module option 'api_base' is not accepted \(accepted: k, mode\)"):
        check_options({"api_base": "http://x"}, declared, "module option")
    with pytest.raises(InvalidArgument, match=r"accepted: none"):
        check_options({"temperature": 0.5}, {}, "module option")


def test_lm_rules_parse_ranges_and_choices():
    """"temperature=0:2" is a float range, "n=1:4" a whole-number range, "effort=low|high" a choice."""
    name, option = parse_lm_rule("temperature=0:2")
    assert name == "temperature" and option.type is float and option.check(name, 1) == 1.0
    assert parse_lm_rule("n=1:4")[1].type is int
    assert parse_lm_rule("reasoning_effort=low|high")[1].choices == ("low", "high")
    assert set(parse_lm_rules(DEFAULT_LM_CALL_OPTIONS)) == {"temperature", "top_p", "max_tokens", "n"}


@pytest.mark.parametrize("entry", ["api_base=a|b", "model=x|y", "api_key=0:1", "extra_headers=a", "base_url=a", "timeout=0:9"])
def test_lm_rules_can_never_allow_the_operators_keys(entry):
    """Endpoint, model, key, headers and client settings cannot be allow-listed for clients."""
    with pytest.raises(ValueError, match="operator"):
        parse_lm_rule(entry)


@pytest.mark.parametrize("entry", ["temperature", "temperature=", "temperature=a:b", "1x=0:1", "t=0:inf"])
def test_malformed_lm_rules_are_refused(entry):
    """An entry that is not NAME=MIN:MAX or NAME=A|B is a configuration error."""
    with pytest.raises(ValueError):
        parse_lm_rule(entry)


def test_a_kind_registers_with_its_declared_options():
    """register(..., options=) keeps the declaration; lookup returns factory and options together."""
    factory = lambda signature, k: ("built", k)  # noqa: E731
    kinds.register("test_declares_k", factory, options={"k": Option(int, default=2, min=1, max=5)})
    kind = kinds.lookup("test_declares_k")
    assert kind.factory is factory and set(kind.options) == {"k"} and kinds.get("test_declares_k") is factory


def test_a_kind_without_a_declaration_takes_no_options():
    """A kind registered without options= accepts none: every client option is refused."""
    kinds.register("test_declares_nothing", lambda signature: None)
    assert dict(kinds.lookup("test_declares_nothing").options) == {}


def test_an_option_declaration_must_be_an_option():
    """Declaring a plain value instead of an Option is an error at registration."""
    with pytest.raises(ValueError, match="Option"):
        kinds.register("test_bad_declaration", lambda signature, k: None, options={"k": 3})


def test_builtins_take_no_options():
    """predict and chain_of_thought declare nothing: LM settings go through lm_options and its allow-list."""
    kinds.load_builtins()
    assert dict(kinds.lookup("predict").options) == {} and dict(kinds.lookup("chain_of_thought").options) == {}
