"""Generate the Python code for proto/ into dspy_pool/ (one place, one script).

`python scripts/gen_proto.py` writes dspy_pool/v1/*_pb2*.py;
`python scripts/gen_proto.py --check` fails when the checked-in code is stale.
"""

import argparse
import filecmp
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
NO_GRPC_TOOLS = "scripts/gen_proto.py needs grpcio-tools, a development dependency: pip install -e '.[dev]'"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    # Imported here, not at the top: without the [dev] extra, one line saying what to install, not a traceback.
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit(NO_GRPC_TOOLS) from None
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = pathlib.Path(tmp)
        generated = generate(tmp_dir)
        stale = [rel for rel in generated if not (ROOT / rel).exists() or not filecmp.cmp(tmp_dir / rel, ROOT / rel, shallow=False)]
        if check:
            for rel in stale:
                print(f"stale generated file: {rel}", file=sys.stderr)
            return 1 if stale else 0
        for rel in generated:
            (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
            (ROOT / rel).write_bytes((tmp_dir / rel).read_bytes())
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
