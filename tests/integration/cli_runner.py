"""Run the `dspy-pool` command line in-process against a test server, capturing what it prints."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import sys
import textwrap

from dspy_pool.cli import main


@dataclasses.dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refuses the command line
        return exc.code


def cli_runner(capsys, monkeypatch, target: str):
    """`await run(*ARGS, stdin=TEXT, at=TARGET)`: `dspy-pool ARGS --target TARGET` (default: the server's)."""

    async def run(*argv: str, stdin: str = "", at: str | None = None) -> Ran:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = await asyncio.to_thread(_main, [*argv, "--target", at or target])
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def write_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)
