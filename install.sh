#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine with Python 3.11:
# Debian's redis-server and prometheus (real services for tests), then a virtualenv in .venv
# with the project and its pinned ranges. Idempotent: re-running only fills what is missing.
#   ./install.sh          runtime
#   ./install.sh --test   runtime + test tools
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# Debian starts the packaged services; tests start their own on loopback ports instead.
if command -v systemctl >/dev/null 2>&1; then systemctl stop redis-server prometheus >/dev/null 2>&1 || true; fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
echo "installed: $(.venv/bin/dispatchml --help >/dev/null && echo dispatchml ok)"
