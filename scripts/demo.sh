#!/usr/bin/env bash
# The main job on built-in data: set up .venv if needed, then run the demo.
# Extra arguments go to the demo (for example --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
bin="${UNVEIL_VENV:-$root/.venv}/bin"
if "$bin/unveil" demo --help >/dev/null 2>&1; then
  exec "$bin/unveil" demo "$@"
fi
# Before `unveil demo` exists: build the phantom cohort and check it.
out="${1:-unveil-demo}"
"$bin/unveil" phantom --out "$out/cohort" --n 16 --size 32 --seed 0 --overwrite
exec "$bin/unveil" check "$out/cohort"
