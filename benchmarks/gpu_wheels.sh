#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh installs on a GPU machine that has
# PyTorch (and numpy, scipy, pandas, transformers, ...) but not unveil's other needs, and
# no internet.  Run it here, where PyPI is reachable; it writes DIR (default wheels/, which
# .gitignore ignores) and prints what it fetched.
#
#   bash benchmarks/gpu_wheels.sh [DIR]
#
# Versions are those of the environment the tests pass in (PYTHON, default .venv/bin/python)
# so the GPU run uses the tested combination; CPython 3.12 manylinux x86-64 wheels (the GPU
# image's Python; override with PYVER=3.11 etc.).  What the GPU image lacks (checked against
# its package list): monai, nibabel, pydantic + pydantic-core + annotated-types +
# typing-inspection (pydantic's pins), pynrrd, pydicom, openpyxl + et-xmlfile, and a
# typing-extensions recent enough for that pydantic.  Not carried: itk (hundreds of MB; only
# imported to read formats other than NIfTI, which the phantom does not use) and the MiniLM
# package (a 90 MB model; the checks run with the phantom's features encoder).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-wheels}
PY=${PYTHON:-.venv/bin/python}
PYVER=${PYVER:-3.12}
PKGS=(monai nibabel pydantic pydantic-core annotated-types typing-inspection typing-extensions
      pynrrd pydicom openpyxl et-xmlfile)
specs=()
for p in "${PKGS[@]}"; do
    v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null || true)
    specs+=("${p}${v:+==$v}")
done
mkdir -p "$DIR"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" "${specs[@]}"
ls -l "$DIR"
du -sh "$DIR"
