#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest (slow tests included).
# Extra arguments go to pytest (for example -m "not slow" or -k config).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" || exit 1
cd "$root"
"${UNVEIL_VENV:-$root/.venv}/bin/python" -m pytest "$@"
rc=$?
# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
