#!/usr/bin/env bash
# Idempotent set-up shared by serve.sh and test.sh: system packages, a virtualenv, txvoice itself.
# Usage: source scripts/setup-env.sh [test]
set -euo pipefail
TXVOICE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TXVOICE_VENV:-$TXVOICE_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

# gcc: the native batch ingest (txvoice/audio/_native.c, an optional extension: without it the
# pure-Python path serves, slower).
apt_packages=(libopus0 libsoxr0 espeak-ng sox gcc)
if [ "${1:-}" = "test" ]; then
  apt_packages+=(ffmpeg gcc zlib1g-dev chromium nodejs)
  # Scale-out tests (tests/scaleout/): a real Redis and a real load balancer, started on free ports.
  apt_packages+=(redis-server haproxy)
  # npm for TypeScript (tests/browser/test_browser_s0.py) and the seeds' Node clients (S3's ws and socket.io-client); NodeSource's nodejs already carries it.
  command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "txvoice: installing system packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "txvoice needs Python >= 3.11 (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2>/dev/null
fi

# A regular (non-editable) install: twistd finds twisted/plugins/txvoice_plugin.py in
# site-packages, which an editable flat-layout install would hide.
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
"$VENV/bin/pip" install -q --no-warn-script-location "$TXVOICE_ROOT$extras" 2>&1 \
  | grep -v "^WARNING: Location 'file://" || true
# The native batch ingest in the checkout as well (tests and bench/run.py import txvoice from here):
# setuptools >= 77 reads pyproject.toml's metadata, as pip's isolated build does.
"$VENV/bin/python" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null \
  || "$VENV/bin/pip" install -q "setuptools>=77" 2>&1 | grep -v "^WARNING" || true
(cd "$TXVOICE_ROOT" && "$VENV/bin/python" setup.py -q build_ext --inplace >/dev/null 2>&1) \
  || echo "txvoice: the native ingest (txvoice/audio/_native.c) was not built: the pure-Python path serves" >&2
# Refresh Twisted's plugin cache so `twistd --help` lists txvoice at once.
"$VENV/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" 2>/dev/null || true
export TXVOICE_ROOT VENV
