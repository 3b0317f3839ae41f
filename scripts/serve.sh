#!/usr/bin/env bash
# Install what is missing, then run the voice server in the foreground on 127.0.0.1:8765.
# Extra arguments go to `twistd txvoice` (see `scripts/serve.sh --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
cd "$TXVOICE_ROOT"
exec "$VENV/bin/twistd" --nodaemon --pidfile= --logger txvoice.logging.twistd_observer txvoice "$@"
