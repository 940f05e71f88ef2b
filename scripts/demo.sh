#!/usr/bin/env bash
# The main job on built-in data: set up .venv if needed, then run `unveil demo`.
# Extra arguments go to `unveil demo` (for example --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
exec "${UNVEIL_VENV:-$root/.venv}/bin/unveil" demo "$@"
