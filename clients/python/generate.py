"""Generate the client's own protobuf/gRPC code from ../../proto (one script, checked in).

    python clients/python/generate.py          # rewrite dspy_pool_client/_gen/
    python clients/python/generate.py --check  # exit 1 when the checked-in code is stale

Only the public API (proto/dspy_pool/v1) is generated. The files keep the proto's
own name, "dspy_pool/v1/dspy_pool.proto", in the descriptor pool, so the client
and the server package can be imported into one process (the identical file is
registered once). protoc writes dspy_pool/v1/*.py under the output folder; they
are moved flat into _gen/ and the one absolute import in the _grpc module
(`from dspy_pool.v1 import dspy_pool_pb2`) becomes a relative one, so the client
never imports the server package. Needs grpcio-tools (the version pinned below).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "dspy_pool/v1/dspy_pool.proto"
OUT = HERE / "dspy_pool_client" / "_gen"
_ABSOLUTE_IMPORT = re.compile(r"^from dspy_pool\.v1 import (\w+_pb2)", re.MULTILINE)


def generate() -> dict[str, str]:
    """Return {file name: text} of the generated, import-fixed modules."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:  # one line saying what to install, not a traceback
        raise SystemExit("clients/python/generate.py needs grpcio-tools: pip install './clients/python[dev]'") from None

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", str(PROTO_ROOT / PROTO)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        produced = pathlib.Path(tmp) / "dspy_pool" / "v1"
        files = {path.name: path.read_text() for path in sorted(produced.glob("*_pb2*.py*"))}
    files = {name: _ABSOLUTE_IMPORT.sub(r"from . import \1", text) for name, text in files.items()}
    files["__init__.py"] = '"""Generated from proto/dspy_pool/v1 by clients/python/generate.py. Do not edit."""\n'
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the checked-in generated code is stale")
    check = parser.parse_args().check
    files = generate()
    stale = [name for name, text in files.items() if not (OUT / name).exists() or (OUT / name).read_text() != text]
    if check:
        for name in stale:
            print(f"stale generated file: clients/python/dspy_pool_client/_gen/{name}", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
        print(f"wrote {(OUT / name).relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
