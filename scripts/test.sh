#!/usr/bin/env bash
# Run the whole test suite: unit tests, then integration tests against the real Docker
# engine, a real JupyterHub and configurable-http-proxy. Installs what it needs first.
# Extra arguments go to pytest (e.g. scripts/test.sh -k gpu).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup.sh" --gpu-stub
cd "$REPO"
# Lint and types first (the rule set is in pyproject.toml); only a whole run does them.
if [ $# -eq 0 ]; then
    echo "==> ruff check"
    .venv/bin/ruff check .
    echo "==> mypy"
    .venv/bin/mypy
fi
exec .venv/bin/python -m pytest -ra "${@:-tests}"
