#!/usr/bin/env bash
# Run the whole test suite: unit tests, then integration tests against the real Docker
# engine, a real JupyterHub and configurable-http-proxy. Installs what it needs first.
# Extra arguments go to pytest (e.g. scripts/test.sh -k gpu).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup.sh" --gpu-stub
cd "$REPO"
exec .venv/bin/python -m pytest -ra "${@:-tests}"
