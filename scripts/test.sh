#!/usr/bin/env bash
# The pack's test command: the whole suite once per ComfyUI found (each in its own venv under ~/.cache, built once),
# then a table per version. See scripts/test.py. Usage: scripts/test.sh [pytest args...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
exec "${PYTHON:-python3}" "$here/scripts/test.py" "$@"
