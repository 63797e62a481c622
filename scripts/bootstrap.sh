#!/usr/bin/env bash
# Prepare ./.venv with the daemon's dependencies. With --dev, also the test tools and the
# PostgreSQL, Mosquitto and NATS server binaries the test suite starts its own throwaway servers from,
# and Debian's chromium, the headless browser the page's test drives (tests/test_page.py).
# Installs missing Debian/Ubuntu packages with apt (as root, or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi

need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ "$dev" = 1 ]; then
  if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
  fi
  if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    need+=(mosquitto)
  fi
  if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    need+=(nats-server)
  fi
  if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    need+=(chromium)
  fi
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# the compiled hot path (scripts/build_ext.py) needs a C compiler and the Python headers; without
# them the daemon still runs, on its pure-Python code, so a failed install here is only a warning
build_need=()
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  build_need+=(gcc libc6-dev)
fi
if ! python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
  build_need+=(python3-dev)
fi
if [ "${#build_need[@]}" -gt 0 ]; then
  echo "installing Debian packages for the compiled hot path: ${build_need[*]}" >&2
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${build_need[@]}" >/dev/null; } ||
    echo "warning: could not install ${build_need[*]}: the compiled hot path will not be built" >&2
fi

python3 - <<'PY' || { echo "marketfeed needs Python 3.10 or newer" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

[ -x .venv/bin/python ] || python3 -m venv .venv
req=requirements.txt
[ "$dev" = 1 ] && req=requirements-dev.txt
stamp=".venv/.installed-$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)-$dev"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
  touch "$stamp"
fi

# The compiled hot path. Without it the daemon runs the pure-Python code, slower, and says so.
if ! .venv/bin/python scripts/build_ext.py; then
  echo "warning: the compiled hot path was not built; the daemon will run its pure-Python code (slower)" >&2
fi
