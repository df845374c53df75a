#!/usr/bin/env bash
# Install a real Home Assistant core for the integration tests, in its own venv.
#
# HA pins (Python 3.13, its own aiohttp/numpy/cryptography, ...) clash with
# Roost's .venv, so it lives in a cache outside the repo that survives clean
# clones: ${ROOST_HA_VENV:-$HOME/.cache/roost/ha-<version>}.
# Idempotent: the marker file .roost-ha-complete holds the version and a hash of
# what defines the requirement list (HA version, Python, integration domains);
# without a matching marker (never installed, interrupted, inputs changed) the
# venv is wiped and rebuilt. Quiet unless it fails; the full log is in
# <venv>/setup-ha.log and its tail is printed on failure.
#
# Usage: scripts/setup-ha.sh             install if needed
#        scripts/setup-ha.sh --check     exit 0 if installed, 1 if not
#        scripts/setup-ha.sh --print-venv
# Exit codes: 0 ok, 1 install failed, 3 Python ${HA_PYTHON_VERSION} (pyenv) missing.
set -euo pipefail
cd "$(dirname "$0")/.."

HA_VERSION=2025.4.4
HA_PYTHON_VERSION=3.13.0
VENV=${ROOST_HA_VENV:-$HOME/.cache/roost/ha-$HA_VERSION}
# Integrations the test configuration loads on top of the ones HA always loads
# (CORE_INTEGRATIONS, DEFAULT_INTEGRATIONS, frontend and recorder from
# homeassistant.bootstrap). Their manifests' `requirements`, over the closure
# of `dependencies`, are installed up front because hass runs with --skip-pip.
DOMAINS=(http api websocket_api config auth onboarding mqtt mqtt_statestream logbook history
         recorder template sensor binary_sensor button)
REVISION=1 # bump when the install steps change in a way that needs a rebuild

marker=$VENV/.roost-ha-complete
inputs="homeassistant==$HA_VERSION python=$HA_PYTHON_VERSION domains=${DOMAINS[*]} rev=$REVISION"
want="$HA_VERSION $(printf '%s' "$inputs" | sha256sum | cut -c1-16)"

installed() { [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -x "$VENV/bin/hass" ]; }

case "${1:-}" in
  --check) installed; exit ;;
  --print-venv) echo "$VENV"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--check|--print-venv]" >&2; exit 2 ;;
esac

installed && exit 0

pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
python=${ROOST_HA_PYTHON:-$pyenv_root/versions/$HA_PYTHON_VERSION/bin/python${HA_PYTHON_VERSION%.*}}
if [ ! -x "$python" ]; then
  echo "setup-ha: Home Assistant $HA_VERSION needs Python $HA_PYTHON_VERSION, not found at $python." >&2
  echo "setup-ha: install it with 'pyenv install $HA_PYTHON_VERSION' (or set ROOST_HA_PYTHON)." >&2
  exit 3
fi

# Another test run may be installing right now: wait for it, then re-check.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
installed && exit 0

if [ -e "$VENV" ]; then
  if [ ! -f "$VENV/setup-ha.log" ] && [ -n "$(ls -A "$VENV")" ]; then
    echo "setup-ha: $VENV exists and is not a venv made by this script; remove it or set ROOST_HA_VENV" >&2
    exit 1
  fi
  rm -rf "$VENV" # incomplete or outdated
fi
mkdir -p "$VENV"
log=$VENV/setup-ha.log
start=$(date +%s)

fail() {
  tail -n 40 "$log" >&2
  echo "setup-ha: $1 failed; full log in $log" >&2
  exit 1
}

step() { echo "== $*" >>"$log"; }

step "venv with $python"
"$python" -m venv "$VENV" >>"$log" 2>&1 || fail "creating the venv"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Without HA's own constraints pip backtracks for a very long time.
step "download homeassistant==$HA_VERSION for its package_constraints.txt"
"${pip[@]}" download -q --no-deps "homeassistant==$HA_VERSION" -d "$VENV/dl" >>"$log" 2>&1 \
  || fail "downloading the homeassistant wheel"
constraints=$VENV/package_constraints.txt
"$VENV/bin/python" - "$VENV/dl" "$constraints" >>"$log" 2>&1 <<'EOF' || fail "extracting package_constraints.txt"
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("homeassistant-*.whl"))
with zipfile.ZipFile(wheel) as z:
    pathlib.Path(sys.argv[2]).write_bytes(z.read("homeassistant/package_constraints.txt"))
EOF

step "install homeassistant==$HA_VERSION"
"${pip[@]}" install -q "$VENV"/dl/homeassistant-*.whl -c "$constraints" >>"$log" 2>&1 \
  || fail "pip install homeassistant"
rm -rf "$VENV/dl"

step "integration requirements for: ${DOMAINS[*]}"
requirements=$VENV/integration-requirements.txt
"$VENV/bin/python" - "$requirements" "${DOMAINS[@]}" >>"$log" 2>&1 <<'EOF' || fail "collecting integration requirements"
import json, pathlib, sys
from homeassistant import bootstrap, components

wanted = {*sys.argv[2:], *bootstrap.CORE_INTEGRATIONS, *bootstrap.DEFAULT_INTEGRATIONS,
          *bootstrap.FRONTEND_INTEGRATIONS, "recorder"}
base = pathlib.Path(components.__file__).parent
seen: set[str] = set()
todo = sorted(wanted)
reqs: set[str] = set()
while todo:
    domain = todo.pop()
    if domain in seen:
        continue
    seen.add(domain)
    manifest = json.loads((base / domain / "manifest.json").read_text())
    reqs.update(manifest.get("requirements", []))
    todo.extend(manifest.get("dependencies", []))
print("domains:", " ".join(sorted(seen)))
print("requirements:", " ".join(sorted(reqs)))
pathlib.Path(sys.argv[1]).write_text("".join(f"{r}\n" for r in sorted(reqs)))
EOF
if [ -s "$requirements" ]; then
  "${pip[@]}" install -q -r "$requirements" -c "$constraints" >>"$log" 2>&1 \
    || fail "pip install of the integration requirements"
fi

step "check"
"$VENV/bin/python" - "$requirements" >>"$log" 2>&1 <<'EOF' || fail "checking the installed requirements"
import pathlib, sys
from homeassistant.util.package import is_installed
missing = [r for r in pathlib.Path(sys.argv[1]).read_text().split() if not is_installed(r)]
if missing:
    sys.exit(f"not installed: {missing}")
EOF
"$VENV/bin/hass" --version >>"$log" 2>&1 || fail "hass --version"

echo "$want" >"$marker"
echo "setup-ha: Home Assistant $HA_VERSION installed in $(($(date +%s) - start)) s ($VENV)"
