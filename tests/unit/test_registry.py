"""Program registry: spec checks and first-class versions."""

from __future__ import annotations

import pytest

from dspy_pool.errors import InvalidArgument, NotFound, ResourceExhausted
from dspy_pool.server.registry import MAX_STATE_JSON_BYTES, ProgramRegistry, check_spec, content_hash
from dspy_pool.state.memory import MemoryStore
from dspy_pool.v1 import dspy_pool_pb2 as pb

KINDS = ["predict", "chain_of_thought"]


def spec(name: str = "qa", signature: str = "question -> answer", **kw) -> pb.ProgramSpec:
    return pb.ProgramSpec(name=name, signature=signature, **kw)


async def add(registry: ProgramRegistry, s: pb.ProgramSpec):
    return await registry.add(s, ["question"], ["answer"], takes_history=False)


def make_registry(max_programs: int = 10, store=None) -> ProgramRegistry:
    """A registry on a MemoryStore (open() is a no-op for it)."""
    return ProgramRegistry(store if store is not None else MemoryStore(), max_programs=max_programs)


def test_valid_spec_passes():
    """A plain signature with the default module kind passes."""
    check_spec(spec(), KINDS)


def test_field_lists_without_signature_pass():
    """Input and output field lists can stand in for the signature."""
    check_spec(pb.ProgramSpec(name="qa", input_fields=[pb.FieldSpec(name="q")], output_fields=[pb.FieldSpec(name="a")]), KINDS)


@pytest.mark.parametrize("name", ["", "has space", "slash/name", "x" * 129, "ünïcode"])
def test_bad_name_rejected(name):
    """Names outside [A-Za-z0-9_.-]{1,128} are rejected with the pattern in the message."""
    with pytest.raises(InvalidArgument, match="program name"):
        check_spec(spec(name=name), KINDS)


def test_name_with_trailing_newline_rejected():
    """A name ending in a newline is rejected."""
    with pytest.raises(InvalidArgument):
        check_spec(spec(name="qa\n"), KINDS)


def test_missing_signature_rejected():
    """No signature and no field lists is rejected, with an example in the message."""
    with pytest.raises(InvalidArgument, match="question -> answer"):
        check_spec(spec(signature="  "), KINDS)


def test_signature_without_arrow_rejected():
    """A signature with no '->' is rejected and quoted back."""
    with pytest.raises(InvalidArgument, match=r"'question answer' has no '->'"):
        check_spec(spec(signature="question answer"), KINDS)


def test_too_long_signature_rejected():
    """An overly long signature is rejected."""
    with pytest.raises(InvalidArgument, match="longer than"):
        check_spec(spec(signature="q -> " + "a" * 5000), KINDS)


@pytest.mark.parametrize("field", ["1abc", "with space", "dash-name", "x" * 65, ""])
def test_non_identifier_field_rejected(field):
    """Field names that are not Python identifiers are rejected, naming the field."""
    s = spec(input_fields=[pb.FieldSpec(name="ok")], output_fields=[pb.FieldSpec(name=field)])
    with pytest.raises(InvalidArgument, match="must be a Python identifier"):
        check_spec(s, KINDS)


def test_unknown_module_kind_rejected():
    """An unknown module kind is rejected and the known kinds are listed."""
    with pytest.raises(InvalidArgument, match="unknown module kind 'rag'; known kinds: predict, chain_of_thought"):
        check_spec(spec(module="rag"), KINDS)


def test_operator_kind_accepted():
    """A kind the operator registered is accepted."""
    check_spec(spec(module="rag"), [*KINDS, "rag"])


def test_too_large_state_json_rejected():
    """state_json above the limit is rejected with the limit in the message."""
    with pytest.raises(InvalidArgument, match=str(MAX_STATE_JSON_BYTES)):
        check_spec(spec(state_json="x" * (MAX_STATE_JSON_BYTES + 1)), KINDS)


async def test_add_twice_makes_versions_one_and_two():
    """Adding a name twice creates versions 1 and 2, keyed by content: name#hash, distinct per version."""
    registry = make_registry(10)
    v1 = await add(registry, spec())
    v2 = await add(registry, spec(signature="question -> answer, confidence"))
    assert (v1.program.version, v2.program.version) == (1, 2)
    assert v1.key == "qa#" + v1.program.content_hash[:16] and v2.key == "qa#" + v2.program.content_hash[:16]
    assert v1.key != v2.key
    assert len(registry) == 2


async def test_added_program_carries_metadata():
    """The stored Program has the content hash, field names and a creation time."""
    s = spec()
    entry = await add(make_registry(10), s)
    assert entry.program.content_hash == content_hash(s)
    assert entry.input_names == ["question"]
    assert list(entry.program.output_names) == ["answer"]
    assert entry.program.created_at.seconds > 0


async def test_existing_finds_identical_latest():
    """existing() returns the latest version when its content is identical."""
    registry = make_registry(10)
    entry = await add(registry, spec())
    assert registry.existing(spec()) is entry


async def test_existing_ignores_older_identical_version():
    """existing() is None when only an older version has identical content."""
    registry = make_registry(10)
    await add(registry, spec())
    await add(registry, spec(signature="question -> answer, confidence"))
    assert registry.existing(spec()) is None


def test_existing_unknown_name_is_none():
    """existing() is None for a name never registered."""
    assert make_registry(10).existing(spec()) is None


async def test_get_zero_is_latest():
    """get(name, 0) returns the latest version; get(name, n) that version."""
    registry = make_registry(10)
    v1 = await add(registry, spec())
    v2 = await add(registry, spec(signature="q -> a"))
    assert registry.get("qa", 0) is v2
    assert registry.get("qa", 1) is v1


def test_get_unknown_name_not_found():
    """get() of an unknown name raises NotFound."""
    with pytest.raises(NotFound, match="no program named 'nope'"):
        make_registry(10).get("nope")


async def test_get_unknown_version_lists_versions():
    """get() of a missing version raises NotFound listing the versions there are."""
    registry = make_registry(10)
    await add(registry, spec())
    with pytest.raises(NotFound, match=r"versions: \[1\]"):
        registry.get("qa", 7)


async def test_delete_one_version():
    """Deleting one version keeps the others and latest falls back."""
    registry = make_registry(10)
    v1 = await add(registry, spec())
    await add(registry, spec(signature="q -> a"))
    assert await registry.delete("qa", 2) == [2]
    assert registry.get("qa") is v1
    assert len(registry) == 1


async def test_delete_last_version_removes_name():
    """Deleting the only version removes the name."""
    registry = make_registry(10)
    await add(registry, spec())
    await registry.delete("qa", 1)
    with pytest.raises(NotFound):
        registry.get("qa")


async def test_delete_all_versions():
    """delete(name) removes every version and returns their numbers."""
    registry = make_registry(10)
    await add(registry, spec())
    await add(registry, spec(signature="q -> a"))
    assert await registry.delete("qa") == [1, 2]
    assert len(registry) == 0


async def test_delete_unknown_not_found():
    """Deleting an unknown name or version raises NotFound."""
    registry = make_registry(10)
    with pytest.raises(NotFound):
        await registry.delete("qa")
    await add(registry, spec())
    with pytest.raises(NotFound):
        await registry.delete("qa", 5)


async def test_versions_not_reused_after_delete():
    """After deleting every version, a new registration gets the next number, not 1."""
    registry = make_registry(10)
    await add(registry, spec())
    await registry.delete("qa")
    assert (await add(registry, spec())).program.version == 2


async def test_max_programs_counts_versions():
    """Adding past max_programs versions raises ResourceExhausted."""
    registry = make_registry(2)
    await add(registry, spec())
    await add(registry, spec(signature="q -> a"))
    with pytest.raises(ResourceExhausted, match="maximum of 2"):
        await add(registry, spec(name="other"))


async def test_the_versions_held_are_bounded_in_bytes_too():
    """Past max_bytes of specs held together, adding is ResourceExhausted naming the flag; a delete makes room."""
    registry = ProgramRegistry(MemoryStore(), max_programs=100, max_bytes=10_000)
    for number in range(4):
        await add(registry, spec(name=f"big{number}", instructions="x" * 2_000))
    with pytest.raises(ResourceExhausted, match="--max-programs-bytes"):
        await add(registry, spec(name="big4", instructions="x" * 2_000))
    assert registry.held_bytes() < 10_000
    await registry.delete("big0")
    await add(registry, spec(name="big4", instructions="x" * 2_000))


async def test_list_latest_vs_all_versions():
    """list(False) gives the latest per name; list(True) every version, sorted by name then version."""
    registry = make_registry(10)
    await add(registry, spec(name="b"))
    await add(registry, spec(name="a"))
    await add(registry, spec(name="a", signature="q -> a"))
    assert [(e.name, e.program.version) for e in registry.list(all_versions=False)] == [("a", 2), ("b", 1)]
    assert [(e.name, e.program.version) for e in registry.list(all_versions=True)] == [("a", 1), ("a", 2), ("b", 1)]


class _DownStore(MemoryStore):
    """A store whose writes and revision reads fail as an unreachable Redis would."""

    down = False

    async def _check(self):
        from dspy_pool.state import StateUnavailable

        if self.down:
            raise StateUnavailable("redis://127.0.0.1:1/0 refused the connection")

    async def add_program(self, program, max_programs):
        await self._check()
        return await super().add_program(program, max_programs)

    async def program_revision(self):
        await self._check()
        return await super().program_revision()


async def test_a_new_registry_on_the_same_store_loads_every_version():
    """A restart (a new registry on the same store) comes back with every version, latest and older."""
    store = MemoryStore()
    first = make_registry(store=store)
    await add(first, spec())
    await add(first, spec(signature="q -> a"))
    restarted = make_registry(store=store)
    await restarted.load()
    assert [(e.name, e.program.version) for e in restarted.list(all_versions=True)] == [("qa", 1), ("qa", 2)]
    assert restarted.get("qa").key == first.get("qa").key and restarted.existing(spec(signature="q -> a")) is not None


async def test_a_replica_sees_another_replicas_program_after_refresh_and_find_refreshes_itself():
    """Two registries on one store: B's refresh (or find on a name it lacks) picks up A's add and delete."""
    store = MemoryStore()
    replica_a, replica_b = make_registry(store=store), make_registry(store=store)
    await replica_b.load()
    await add(replica_a, spec(name="shared"))
    found = await replica_b.find("shared")
    assert found.program.version == 1
    await replica_a.delete("shared")
    assert await replica_b.refresh() is True
    with pytest.raises(NotFound):
        await replica_b.find("shared")


async def test_with_the_store_down_reads_serve_and_writes_are_unavailable():
    """An unreachable store: the snapshot still answers get/list; add is UNAVAILABLE saying what still works."""
    from dspy_pool.errors import Unavailable

    store = _DownStore()
    registry = make_registry(store=store)
    await add(registry, spec())
    store.down = True
    assert registry.get("qa").program.version == 1
    with pytest.raises(Unavailable, match="already known keep serving"):
        await add(registry, spec(name="new"))
    with pytest.raises(NotFound):
        await registry.find("missing")  # a refresh that cannot reach the store is not an error of its own


async def test_a_store_that_lost_its_programs_does_not_empty_the_snapshot():
    """A revision that goes back (a wiped store) keeps the snapshot serving and is logged, not followed."""
    from structlog.testing import capture_logs

    store = MemoryStore()
    registry = make_registry(store=store)
    await add(registry, spec())
    await registry.refresh()
    wiped = MemoryStore()  # what a Redis restarted without persistence looks like
    registry.store = wiped
    with capture_logs() as logs:
        assert await registry.refresh() is False
    assert registry.get("qa").program.version == 1
    assert [entry["event"] for entry in logs] == ["state_store_reset_detected"]


async def test_base_version_is_the_latest_client_version_through_adds_deletes_and_reloads():
    """base_version skips optimization results, follows adds and deletes, and survives a reload; unknown is NOT_FOUND."""
    registry = make_registry()
    await add(registry, spec())
    await add(registry, spec(signature="q -> a"))
    await registry.add(spec(signature="q -> a", state_json="{}"), ["q"], ["a"], False, meta=pb.ProgramMeta(job_id="job-1"))
    assert registry.base_version("qa").program.version == 2
    assert registry.known_base("qa") is registry.base_version("qa")
    await registry.delete("qa", 2)
    assert registry.base_version("qa").program.version == 1
    await registry.delete("qa", 1)
    assert registry.base_version("qa").program.version == 3  # only an optimization's result left: the latest
    reloaded = make_registry(store=registry.store)
    await reloaded.load()
    assert reloaded.base_version("qa").program.version == 3
    await registry.delete("qa")
    assert registry.known_base("qa") is None
    with pytest.raises(NotFound):
        registry.base_version("qa")


async def test_a_version_reads_its_name_number_and_key_without_the_message():
    """A ProgramVersion carries its name, number and content key as plain fields, equal to the message's."""
    entry = await add(make_registry(), spec())
    assert (entry.name, entry.version, entry.key) == (entry.program.spec.name, entry.program.version, entry.ref.key)
    assert entry.client_registered


def test_a_policy_within_its_versions_is_itself_and_one_naming_a_gone_version_forgets_it():
    from dspy_pool.server.registry import policy_within

    policy = pb.ExecutionPolicy(program="p", mode="optimized", base_version=1, optimized_version=3, hybrid_percent=20)
    assert policy_within(policy, {1, 2, 3}) is policy
    kept = policy_within(policy, {1, 2})
    assert (kept.base_version, kept.optimized_version, kept.mode, kept.hybrid_percent) == (1, 0, "optimized", 20)
    assert policy.optimized_version == 3  # the stored message is not changed in place
    assert policy_within(pb.ExecutionPolicy(program="p", base_version=4), {1}).base_version == 0
    assert policy_within(pb.ExecutionPolicy(program="p"), set()) == pb.ExecutionPolicy(program="p")


async def test_a_negative_version_is_invalid_argument_not_not_found():
    registry = ProgramRegistry(MemoryStore(), max_programs=10)
    await registry.load()
    await registry.add(pb.ProgramSpec(name="qa", signature="q -> a"), ["q"], ["a"], takes_history=False)
    with pytest.raises(InvalidArgument, match="numbered from 1"):
        registry.get("qa", -1)
    with pytest.raises(InvalidArgument, match="numbered from 1"):
        await registry.delete("qa", -2)
    assert registry.get("qa").version == 1
