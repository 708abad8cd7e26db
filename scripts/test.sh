#!/usr/bin/env bash
# The pack's test command: builds (once) a venv keyed by the requirement files, then runs pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
key=$(cat "$here/requirements.txt" "$here/requirements-test.txt" | sha256sum | cut -c1-16)
venv="${WANID_VENV:-$HOME/.cache/wanid-test-venv-$key}"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "[test.sh] building test environment in $venv (once per requirements change)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first, so nothing else drags in another build of it.
  "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$venv/bin/python" -m pip install -q -r "$here/requirements.txt" -r "$here/requirements-test.txt"
  touch "$venv/.complete"
fi
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
