#!/usr/bin/env bash
# Generate Python code, gRPC stubs and .pyi stubs from protos/roost/**.proto into
# OUT (default: protos/, beside the sources, importable as roost.<svc>.v1).
# `make proto` writes them; `make proto-check` generates into a temp dir and diffs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/protos}
py=${PYTHON:-$here/.venv/bin/python}
cd "$here/protos"
mapfile -t files < <(find roost -name '*.proto' | sort)
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  --plugin=protoc-gen-mypy="$(dirname "$py")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$py")/protoc-gen-mypy_grpc" \
  "${files[@]}"
# Every generated directory is a regular package.
find "$out/roost" -type d -exec sh -c 'f="$1/__init__.py"; [ -f "$f" ] || : > "$f"' _ {} \;
