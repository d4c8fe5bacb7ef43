#!/usr/bin/env bash
# A fresh clone to a running stack: venv, install, then `meshgate up` on the sample config
# (embedded Redis, built-in reference engine). Extra arguments go to `meshgate up`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "meshgate needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/meshgate up "$@"
