#!/usr/bin/env bash
# The GPU checks of the training loop, in one go, in under 8 minutes, for a bare GPU machine
# with PyTorch preinstalled and no internet (unveil's other needs come as wheels, see
# benchmarks/gpu_wheels.sh).  Every table and log goes to one folder.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--out DIR] [--wheels DIR] [--work DIR]
#
#   --device  cuda (default): the real sizes.  cpu: the same stages at tiny sizes, to test
#             this script on a machine without a GPU (a few minutes on 2 cores).
#   --out     where the results go (default $OUT, else gpu-check-out): at most 8 files,
#             env.txt summary.txt train_loop.md train_loop.json train_step.md train.log
#             generate.log ddp.log.
#   --wheels  folder of wheels to install when unveil's needs do not import (default
#             wheels/); installed with pip --no-index --no-deps --target into --work/deps.
#   --work    scratch folder for phantoms, runs and volumes (default a new temporary one).
#   PYTHON    interpreter (default: .venv/bin/python when it exists, else python3).
#
# Stages, each under its own `timeout` and all under one deadline (BUDGET_S, default 470 s):
#   1. benchmarks/train_loop.py: the real loop against the bare step (cuda: demo,
#      demo-diffusion, gan-affine at 64x64x32);
#   2. benchmarks/train_step.py for 64x64x32 batch 2, bf16 (cuda: all 8 shipped configs);
#   3. `unveil phantom --size 128` (6 subjects) and a short `unveil train` of gan-affine on
#      it, streamed from the on-disk cache (data.memory_budget_gb below the cohort);
#   4. a whole-volume `unveil generate` of one subject with the trained checkpoint;
#   5. torchrun on one node: NCCL over every GPU when there are 2 or more, else 1 process
#      (cpu: 2 gloo processes), 4 steps of tiny-gan.
# The exit status is 0 when every stage passed; summary.txt says which did not.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DEVICE=cuda
OUTDIR=${OUT:-gpu-check-out}
WHEELS=wheels
WORK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --out) OUTDIR=$2; shift 2 ;;
        --wheels) WHEELS=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu" >&2; exit 2 ;; esac
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [ -z "$WORK" ]; then WORK=$(mktemp -d /tmp/unveil-gpu-check.XXXXXX); fi
mkdir -p "$WORK"
BUDGET_S=${BUDGET_S:-470}
START=$(date +%s)
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
FAILED=0
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

note() { echo "$*" | tee -a "$SUMMARY"; }

# stage NAME SECONDS LOG CMD...: run CMD under `timeout`, never past the deadline.
stage() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 15 ]; then
        note "SKIP  $name: the ${BUDGET_S} s budget is spent"
        FAILED=1
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0 rc
    t0=$(date +%s)
    echo "== $name (limit ${limit} s)" >&2
    { echo "\$ $*"; echo; } >> "$log"
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
    rc=$?
    local dt=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        note "ok    $name (${dt} s)"
    else
        [ $rc -eq 124 ] && note "FAIL  $name: timed out after ${limit} s (see $(basename "$log"))" \
            || note "FAIL  $name: exit status $rc after ${dt} s (see $(basename "$log"))"
        FAILED=1
    fi
    return $rc
}

# ---------------------------------------------------------------- environment
ENV="$OUTDIR/env.txt"
{
    echo "gpu_check.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, python $PYTHON"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed file(s)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
} > "$ENV" 2>&1
IMPORTS="import torch, numpy, monai, nibabel, pydantic, yaml, einops, scipy, pandas, transformers, tqdm, tensorboard, safetensors"
if ! "$PYTHON" -c "$IMPORTS" >/dev/null 2>&1; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        DEPS="$WORK/deps"
        echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $DEPS" | tee -a "$ENV"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$DEPS" "$WHEELS"/*.whl >> "$ENV" 2>&1
        export PYTHONPATH="$REPO/src:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "unveil's needs do not import and $WHEELS/ holds no wheels (bash benchmarks/gpu_wheels.sh)" | tee -a "$ENV"
    fi
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - >> "$ENV" 2>&1 <<'EOF'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(" ", i, torch.cuda.get_device_name(i))
for p in ("monai", "nibabel", "pydantic", "numpy", "transformers"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "MISSING")
import unveil
print("unveil", unveil.__file__)
EOF
if ! "$PYTHON" -c "$IMPORTS; import unveil.train.loop" >> "$ENV" 2>&1; then
    note "FAIL  environment: unveil does not import (see env.txt)"
    exit 1
fi
NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$DEVICE" = cuda ] && [ "$NGPU" -lt 1 ]; then
    note "FAIL  environment: --device cuda but torch sees no GPU (use --device cpu)"
    exit 1
fi
note "environment: $(grep '^torch' "$ENV" | head -1) (see env.txt)"

# ---------------------------------------------------------------- sizes per device
if [ "$DEVICE" = cuda ]; then
    LOOP_ARGS=(--configs demo,demo-diffusion,gan-affine --steps 40 --skip 10 --subjects 8)
    LOOP_LIMIT=170
    # One process for all 8 cases (a CUDA start per case would cost the budget); the CUDA
    # peak is reset per case, so peak memory stays per case.
    STEP_ARGS=(--sizes 64x64x32:b2 --amp bf16 --iters 3 --warmup 2 --no-isolate)
    STEP_LIMIT=110
    PH_ARGS=(--n 6 --size 128)
    TRAIN_ARGS=(--config gan-affine --steps 60 text.template=phantom text.encoder=features
                train.ckpt_every=30 train.log_every=10 train.val_every=100000
                data.memory_budget_gb=0.5 train.device=cuda)
    GEN_ARGS=(--device cuda --amp bf16)
    DDP_N=$NGPU
    DDP_SET=(train.device=cuda)
else
    TINY_SET=(--set model.channels=[8,16] --set model.norm_groups=4 --set model.heads=2
              --set gan.disc_channels=8 --set gan.disc_layers=1 --set text.cond_dim=16)
    LOOP_ARGS=(--configs tiny-gan,tiny-diffusion --steps 6 --skip 1 --subjects 6
               --rounds 2 --bare-block 1 --threads 2)
    LOOP_LIMIT=150
    STEP_ARGS=(--sizes 8x8x8:b2 --families gan --fusions affine --iters 1 --warmup 0
               --threads 2 --text-tokens 6 "${TINY_SET[@]}")
    STEP_LIMIT=120
    PH_ARGS=(--n 6 --size 24)
    TRAIN_ARGS=(--config tiny-gan --steps 4 train.ckpt_every=2 train.log_every=2
                train.val_every=100000 data.memory_budget_gb=0.00001 train.device=cpu)
    GEN_ARGS=(--device cpu)
    DDP_N=2
    DDP_SET=(train.device=cpu)
fi

# ---------------------------------------------------------------- 1. the loop
stage "train_loop.py ($DEVICE)" "$LOOP_LIMIT" "$OUTDIR/train_loop.md" \
    "$PYTHON" benchmarks/train_loop.py --device "$DEVICE" "${LOOP_ARGS[@]}" --markdown \
    --json "$OUTDIR/train_loop.json" --work "$WORK/loop" \
    && note "      $(tail -1 "$OUTDIR/train_loop.md")"

# ---------------------------------------------------------------- 2. the networks
stage "train_step.py ($DEVICE)" "$STEP_LIMIT" "$OUTDIR/train_step.md" \
    "$PYTHON" benchmarks/train_step.py --device "$DEVICE" "${STEP_ARGS[@]}" --markdown

# ---------------------------------------------------------------- 3. a real run, streamed
PH="$WORK/phantom"
RUN="$WORK/run"
rm -rf "$PH" "$RUN"
stage "phantom + train ($DEVICE)" 100 "$OUTDIR/train.log" bash -c '
    set -e
    "$0" -m unveil phantom --out "$1" '"${PH_ARGS[*]}"'
    "$0" -m unveil train --cohort "$1" --out "$2" --no-progress '"${TRAIN_ARGS[*]}"'
    ls "$2/data-cache" | grep -c "\.json$" | sed "s/^/data-cache entries: /"
    tail -3 "$2/losses.jsonl"
' "$PYTHON" "$PH" "$RUN"

# ---------------------------------------------------------------- 4. whole-volume generation
CKPT=$(ls "$RUN"/checkpoints/ckpt-*.pt 2>/dev/null | tail -1)
if [ -n "$CKPT" ]; then
    stage "generate, whole volume ($DEVICE)" 60 "$OUTDIR/generate.log" \
        "$PYTHON" -m unveil generate --checkpoint "$CKPT" --cohort "$PH" --out "$WORK/gen" \
        --split test --no-progress "${GEN_ARGS[@]}"
else
    note "SKIP  generate: the training stage left no checkpoint"
    FAILED=1
fi

# ---------------------------------------------------------------- 5. torchrun, one node
SMALL="$WORK/phantom-small"
rm -rf "$SMALL" "$WORK/ddp"
stage "torchrun x$DDP_N ($DEVICE)" 60 "$OUTDIR/ddp.log" bash -c '
    set -e
    "$0" -m unveil phantom --out "$1" --n 6 --size 16
    OMP_NUM_THREADS=1 "$0" -m torch.distributed.run --standalone --nproc-per-node "$2" \
        -m unveil train --config tiny-gan --cohort "$1" --out "$3" --steps 4 --no-progress \
        train.log_every=1 train.val_every=1000 '"${DDP_SET[*]}"'
    test "$(wc -l < "$3/losses.jsonl")" -eq 4
    echo "4 steps on $2 process(es), one loss record per step"
' "$PYTHON" "$SMALL" "$DDP_N" "$WORK/ddp"

total=$(($(date +%s) - START))
note "total ${total} s; results in $OUTDIR"
[ $FAILED -eq 0 ] && note "all stages passed" || note "some stages FAILED"
exit $FAILED
