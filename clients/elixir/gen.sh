#!/usr/bin/env bash
# Generates the Elixir modules for proto/dspy_pool/v1 into lib/generated/
# (git-ignored; every client generates its own code from proto/).
#
# Needs protoc and the protoc-gen-elixir escript from the protobuf library,
# the same minor version as mix.exs pins:
#   mix escript.install hex protobuf "~> 0.14.0"   # puts protoc-gen-elixir in ~/.mix/escripts
#   export PATH="$HOME/.mix/escripts:$PATH"
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
command -v protoc >/dev/null || { echo "gen.sh: protoc not found" >&2; exit 2; }
command -v protoc-gen-elixir >/dev/null || { echo "gen.sh: protoc-gen-elixir not found (see the top of this file)" >&2; exit 2; }
mkdir -p "$HERE/lib/generated"
# google/protobuf/*.proto imports resolve to modules the protobuf library
# ships (Google.Protobuf.Struct, Google.Protobuf.Timestamp); protoc still
# needs the files, which protoc's own include directory provides.
protoc -I "$ROOT/proto" \
  --elixir_out=plugins=grpc:"$HERE/lib/generated" \
  "$ROOT/proto/dspy_pool/v1/dspy_pool.proto"
echo "generated into $HERE/lib/generated"
