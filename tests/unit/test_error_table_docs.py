"""docs/OPERATIONS.md's error table and the README's retry sentence say what dspy_pool/errors.py says."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from dspy_pool.errors import MEANINGS, ErrorKind

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gen_error_table", ROOT / "scripts" / "gen_error_table.py")
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def documented_rows() -> dict[str, list[str]]:
    """The marked table of docs/OPERATIONS.md, parsed: kind -> its cells after the kind."""
    text = gen.OPERATIONS.read_text()
    block = text.split(gen.TABLE_BEGIN, 1)[1].split(gen.TABLE_END, 1)[0]
    rows = [line for line in block.strip().splitlines()[2:] if line.startswith("|")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    return {row[0].strip("`"): row[1:] for row in cells}


def test_every_kind_is_documented_once():
    """The table lists each ErrorKind exactly once, in the table's order."""
    assert list(documented_rows()) == [kind.value for kind in MEANINGS]
    assert set(documented_rows()) == {kind.value for kind in ErrorKind}


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_documented_row_matches_the_table(kind):
    """Status, retried, breaker, fallback reason, caller's fault and may-have-run agree with errors.MEANINGS."""
    status, retried, breaker, fallback, caller, may_have_run, _when = documented_rows()[kind.value]
    row = MEANINGS[kind]
    yes = {"yes": True, "no": False}
    assert status == row.status.name
    assert (yes[retried], yes[breaker], yes[caller], yes[may_have_run]) == (row.transient, row.breaker_failure, row.caller_fault, row.may_have_run)
    assert fallback == (f"`{row.fallback.value}`" if row.fallback is not None else "never falls back")


@pytest.mark.parametrize("doc", [gen.OPERATIONS, gen.README], ids=lambda path: path.name)
def test_generated_blocks_are_fresh(doc):
    """Regenerating changes nothing; when this fails, run python scripts/gen_error_table.py."""
    current, fresh = gen.rendered(doc)
    assert current == fresh, f"{doc.name} drifted from dspy_pool/errors.py: run python scripts/gen_error_table.py"
