"""Where does a zonal effect's spill come from?  The demo with the UNet's text path cut.

Runs ``unveil demo`` (phantom, training, counterfactuals, analysis, report) with one change:
the UNet inside the generator sees no text (its fusion blocks get the learned null
condition), so the clinical text reaches the image only through the regional effect head
(``model.effect_knots``).  If the smoking effect still spills from the upper zone into the
middle and lower zones by as much as with the shipped model, the UNet's text path is not
what spreads it; the head's basis is.  The figures are in docs/recovery.md.

    python benchmarks/spill_probe.py --out spill-probe                 # the demo's config
    python benchmarks/spill_probe.py --out spill-probe --config my.yaml

This is a measurement, not a product setting: a model whose UNet cannot read the text
cannot learn texture effects of the text.  It prints the demo's verdict lines and the
per-region effects of each edit (mean over held-out subjects, HU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cut_unet_text_path() -> None:
    """Patch ``ConditionalUNet.forward``: the UNet runs without text, the head with it."""
    from unveil.nn import unet

    original = unet.ConditionalUNet.forward

    def forward(self, x, mask, t=None, cond=None):
        head = self.effect_head
        if head is None:
            raise SystemExit("the config has no effect head (model.effect_knots: 0).")
        self.effect_head = None  # the UNet's own output, without the head and the text
        try:
            out = original(self, x, mask, t, None)
        finally:
            self.effect_head = head
        return out + head(mask, cond)

    unet.ConditionalUNet.forward = forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--config", default=None, help="demo config (default: demo)")
    parser.add_argument("--steps", type=int, default=None, help="training steps override")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; choose a new folder")
    cut_unet_text_path()
    from unveil.demo import run_demo

    result = run_demo(args.out, config=args.config, steps=args.steps, progress=True)
    for line in result.verdict:
        print(line)
    print("\n| contrast | region | effect (HU) |\n|---|---|--:|")
    for row in result.results["cohort_stats"]:
        if not row.get("null_control"):
            print(f"| {row['contrast']} | {row['region']} | {row['mean_diff_hu']:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
