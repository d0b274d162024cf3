#!/usr/bin/env bash
# Generates the Go code for proto/dspy_pool/v1 and builds the example, in
# GOPATH mode against Debian's Go packages (no module proxy needed):
#
#   apt-get install -y golang-go golang-google-grpc-dev golang-google-protobuf-dev \
#       protoc-gen-go protoc-gen-go-grpc protobuf-compiler
#   clients/go/build.sh            # -> clients/go/build/dspy-pool-example
#   clients/go/build.sh --run      # also starts `dspy-pool serve --lm sim` and runs it
#
# Everything generated goes under clients/go/build/ (git-ignored).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BUILD="$HERE/build"
GOPATH_DIR="$BUILD/gopath"
# Must match option go_package in dspy_pool.proto.
GEN_IMPORT="example.com/dspypool/gen/dspy_pool/v1"
APP_IMPORT="example.com/dspypool/cmd/dspy-pool-example"
SYSTEM_GOPATH="${SYSTEM_GOPATH:-/usr/share/gocode}"

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (see the apt-get line at the top)" >&2; exit 2; }
done

# google/protobuf/*.proto: protoc's own include dir, else grpc_tools' copy.
WKT_INCLUDE=""
for dir in /usr/include /usr/local/include; do
  [ -f "$dir/google/protobuf/struct.proto" ] && WKT_INCLUDE="$dir" && break
done
if [ -z "$WKT_INCLUDE" ]; then
  WKT_INCLUDE="$(python3 -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))' 2>/dev/null || true)"
fi
[ -n "$WKT_INCLUDE" ] || { echo "build.sh: google/protobuf/struct.proto not found (install protobuf-compiler or libprotobuf-dev)" >&2; exit 2; }

rm -rf "$GOPATH_DIR"
mkdir -p "$GOPATH_DIR/src" "$GOPATH_DIR/src/$APP_IMPORT"

# paths=import puts the files under $GOPATH/src/<go_package import path>.
protoc -I "$ROOT/proto" -I "$WKT_INCLUDE" \
  --go_out="$GOPATH_DIR/src" --go_opt=paths=import \
  --go-grpc_out="$GOPATH_DIR/src" --go-grpc_opt=paths=import \
  "$ROOT/proto/dspy_pool/v1/dspy_pool.proto"
cp "$HERE/main.go" "$GOPATH_DIR/src/$APP_IMPORT/main.go"

export GO111MODULE=off
export GOPATH="$GOPATH_DIR:$SYSTEM_GOPATH"
export GOCACHE="${GOCACHE:-$BUILD/gocache}"
go vet "$APP_IMPORT"
go build -o "$BUILD/dspy-pool-example" "$APP_IMPORT"
echo "built $BUILD/dspy-pool-example"

if [ "${1:-}" = "--run" ]; then
  # Port 0, then the port from the server's `server_serving ... port=N` line: a port picked free here
  # beforehand could be taken by another process (or the server's own children) before the server binds it.
  dspy-pool serve --lm sim --workers 1 --drain-grace-s 2 --listen 127.0.0.1:0 >"$BUILD/server.log" 2>&1 &
  SERVER=$!
  trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
  PORT=""
  for _ in $(seq 1 600); do
    PORT="$(sed -n 's/.*server_serving.*port=\([0-9][0-9]*\).*/\1/p' "$BUILD/server.log" | head -n 1)"
    [ -n "$PORT" ] && break
    kill -0 "$SERVER" 2>/dev/null || { echo "build.sh: the server exited; its log:" >&2; cat "$BUILD/server.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$PORT" ] || { echo "build.sh: no server_serving line within 60 s; see $BUILD/server.log" >&2; exit 1; }
  "$BUILD/dspy-pool-example" -target "127.0.0.1:$PORT"
fi
