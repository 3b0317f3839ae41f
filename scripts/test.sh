#!/usr/bin/env bash
# Install what is missing (system packages, test dependencies, the Autobahn testsuite's Python 2.7
# environment), type-check txvoice/ (mypy, configured in pyproject.toml), lint (ruff), then run the
# whole suite.  Extra arguments go to pytest (and skip the checks, for a quick run of a few tests).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh" test
cd "$TXVOICE_ROOT"
if [ "$#" -eq 0 ]; then
  echo "txvoice: type check (mypy)" >&2
  "$VENV/bin/mypy" --cache-dir "${XDG_CACHE_HOME:-$HOME/.cache}/txvoice-mypy"
  echo "txvoice: lint (ruff: pyflakes-level errors)" >&2
  "$VENV/bin/ruff" check --no-cache --select F,E9 txvoice tests bench twisted
fi
exec "$VENV/bin/pytest" "$@"
