#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install unveil into it.
# Needs only Python 3.10+ with pip and venv. Safe to run again: it reinstalls only when
# pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
venv="${UNVEIL_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $venv" >&2
  "$PY" -m venv "$venv"
fi
stamp="$venv/.unveil-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing unveil and its dependencies (first time takes a few minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2 || true
  # PyTorch first, pinned, so that nothing later pulls a multi-GB CUDA build by accident.
  # Set UNVEIL_TORCH to choose another build (for example "torch==2.13.0" from a CUDA index).
  "$venv/bin/python" -m pip install -q "${UNVEIL_TORCH:-torch==2.13.0}" >&2
  "$venv/bin/python" -m pip install -q -e ".[dev,minilm]" >&2
  echo "$want" > "$stamp"
fi
