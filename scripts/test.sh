#!/usr/bin/env bash
# Install what is missing (system packages, test dependencies, the Autobahn testsuite's Python 2.7
# environment), then run the whole suite.  Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh" test
cd "$TXVOICE_ROOT"
exec "$VENV/bin/pytest" "$@"
