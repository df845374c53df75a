#!/usr/bin/env bash
# Prepare this machine for Roost: system packages, the virtualenv, npm dev tools.
# Idempotent; `make setup` (and so `make run` / `make test`) calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
need_apt=()
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then need_apt+=(mosquitto); fi
if ! command -v mosquitto_sub >/dev/null; then need_apt+=(mosquitto-clients); fi
# The egress test (tests/integration/test_egress.py) traces the stack's network calls.
if ! command -v strace >/dev/null; then need_apt+=(strace); fi
# Metrics sync ([metrics] remote_write_url; tests/integration/test_metrics_sync.py).
if ! command -v prometheus >/dev/null && [ ! -x /usr/bin/prometheus ]; then need_apt+=(prometheus); fi

if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing ${need_apt[*]} from Debian packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts a system broker on :1883; Roost runs its own on a free port.
    (command -v service >/dev/null && $sudo service mosquitto stop >/dev/null 2>&1) || true
    # Likewise its system Prometheus: `roost run` starts its own, only when configured.
    (command -v service >/dev/null && $sudo service prometheus stop >/dev/null 2>&1) || true
  else
    echo "setup: please install the Mosquitto MQTT broker (macOS: brew install mosquitto;"
    echo "       Fedora: dnf install mosquitto; others: https://mosquitto.org/download/)" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.roost-installed
if [ ! -f $stamp ] || [ pyproject.toml -nt $stamp ] || [ constraints.txt -nt $stamp ]; then
  echo "setup: installing Roost and its pinned dependencies into .venv"
  log=.venv/install.log
  if .venv/bin/pip install --upgrade pip >"$log" 2>&1 \
     && .venv/bin/pip install -c constraints.txt -e '.[dev]' >>"$log" 2>&1; then
    touch $stamp
  else
    tail -n 40 "$log" >&2
    echo "setup: pip install failed; full log in $log" >&2
    exit 1
  fi
fi

if command -v npm >/dev/null; then
  if [ ! -x node_modules/.bin/buf ] || [ package-lock.json -nt node_modules/.bin/buf ]; then
    echo "setup: installing buf (protobuf lint) from npm"
    npm ci --no-audit --no-fund --silent >/dev/null 2>&1 || npm install --no-audit --no-fund --silent >/dev/null
  fi
else
  echo "setup: npm not found; 'make lint' will skip buf lint" >&2
fi
