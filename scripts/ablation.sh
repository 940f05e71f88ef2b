#!/usr/bin/env bash
# The published ablation redone at CPU scale: GAN and diffusion, each with mask-only,
# concat, affine and cross-attention text fusion (configs/ablation/), trained on one
# cohort with planted effects, then scored by `unveil evaluate`, probed by a counterfactual
# run (smoking never -> current, blood group as the null control) analysed against the
# planted effects, and put side by side by `unveil compare`.  See docs/ablation.md.
#
# usage: scripts/ablation.sh COHORT OUT [key=value ...]
#   COHORT  a cohort with effects.json (unveil phantom / unveil plant)
#   OUT     folder for the eight runs and the comparison (re-running resumes: finished
#           stages are skipped, an interrupted training resumes from its checkpoint)
#   key=value overrides passed to every `unveil train` (e.g. train.steps=300, or the grid
#           and template of a planted cohort: see docs/ablation.md)
# Environment: VARIANTS (default all eight, e.g. "gan-concat diffusion-concat"),
#   SEEDS (counterfactual seeds per subject, default 2), MIN_EFFECT (HU margin, default 5),
#   AMP (precision of the network in the counterfactual and evaluate runs: none, the
#   default, or bf16; training follows the config's train.amp), ATTRIBUTES (template
#   fields the evaluation's adherence readers read, default "smoking diagnosis age"; the
#   plant-example template has "smoking age").
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,19p "$0" | sed 's/^# \{0,1\}//'; exit 2; }
cohort=$1 out=$2
shift 2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
variants=${VARIANTS:-"gan-maskonly gan-concat gan-affine gan-crossattn diffusion-maskonly diffusion-concat diffusion-affine diffusion-crossattn"}
seeds=${SEEDS:-2}
min_effect=${MIN_EFFECT:-5}
amp=${AMP:-none}
attributes=${ATTRIBUTES:-"smoking diagnosis age"}
[ -f "$cohort/effects.json" ] || {
  echo "ablation: $cohort has no effects.json; make the cohort with 'unveil phantom' or 'unveil plant'." >&2
  exit 2
}
mkdir -p "$out"
evals=()
for v in $variants; do
  cfg="$here/configs/ablation/$v.yaml"
  [ -f "$cfg" ] || { echo "ablation: no config $cfg; variants are named like gan-concat." >&2; exit 2; }
  run="$out/$v/run" ev="$out/$v/eval" cf="$out/$v/cf"
  echo "== $v"
  if ls "$run"/checkpoints/ckpt-*.pt >/dev/null 2>&1; then
    unveil train --config "$cfg" --cohort "$cohort" --out "$run" --resume "$@"
  else
    unveil train --config "$cfg" --cohort "$cohort" --out "$run" "$@"
  fi
  ids=$(python -c "import json,sys; s=json.load(open(sys.argv[1]))['splits']; print(' '.join(s['val']+s['test']))" "$run/splits.json")
  if [ ! -f "$cf/analysis/recovery.csv" ]; then
    # shellcheck disable=SC2086  # ids is a list of words
    unveil counterfactual --checkpoint "$run" --cohort "$cohort" --out "$cf" --overwrite \
      --baseline smoking=never --edit smoking=current --null-edit blood_group=O \
      --seeds "$seeds" --amp "$amp" --ids $ids
    unveil analyze "$cf" --min-effect "$min_effect"
  fi
  if [ ! -f "$ev/summary.json" ]; then
    # shellcheck disable=SC2086  # attributes is a list of words
    unveil evaluate --checkpoint "$run" --cohort "$cohort" --split test --out "$ev" \
      --overwrite --amp "$amp" --edit smoking=current --attributes $attributes
  fi
  cp "$cf/analysis/recovery.csv" "$ev/recovery.csv"
  evals+=("$ev")
done
unveil compare "${evals[@]}" --out "$out/comparison"
echo "ablation: table in $out/comparison/comparison.md"
