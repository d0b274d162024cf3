"""Write the README's configuration table from the settings declared in dspy_pool/server/config.py.

`python scripts/gen_config_docs.py` rewrites the text between the markers;
`--check` fails when the README drifted (tests/unit/test_config.py runs the same check).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dspy_pool.server.config import markdown_table  # noqa: E402

README = ROOT / "README.md"
BEGIN = "<!-- config-table:begin -->\n"
END = "<!-- config-table:end -->"


def render(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + markdown_table() + END + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the README's table is stale")
    text = README.read_text()
    wanted = render(text)
    if parser.parse_args().check:
        if wanted != text:
            print("README.md configuration table is stale: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    print("wrote README.md configuration table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
