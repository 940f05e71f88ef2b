"""A tiny diffusion model must learn a large, forced text effect (slow: about a minute).

The cohort is a 16^3 phantom in which ONE binary attribute (sex) shifts every lung voxel
by -200 HU and nothing else is planted; blood group is the null attribute.  After a short
training with the settings the diffusion demo ships (zero-terminal-SNR schedule, x0
prediction, concat fusion at the bottleneck and decoder, text path at 10x the learning
rate), counterfactual pairs that share their noise must show the effect with its sign and a
substantial part of its size (a quarter; the model is far from converged after 400 steps),
and the null edit must stay far smaller.  The measured figures, and what the original
schedule gives (nothing at all), are in docs/diffusion.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

PLANTED = -200.0


@pytest.mark.slow
def test_tiny_diffusion_learns_a_forced_text_effect(tmp_path):
    from unveil.config import load_config, resolve_config_path
    from unveil.data.cohort import Cohort
    from unveil.data.effects import EffectSpec
    from unveil.data.phantom import make_phantom
    from unveil.infer.counterfactual import Generator, subject_noise
    from unveil.text.edits import apply_edits, parse_edit
    from unveil.train.loop import train

    torch.set_num_threads(2)
    cohort = make_phantom(
        tmp_path / "toy",
        n=48,
        size=16,
        seed=0,
        effects=[EffectSpec(attribute="sex", value="F", region="lung", shift_hu=PLANTED)],
    )
    cfg = load_config(
        resolve_config_path("tiny-diffusion"),
        [
            "diffusion.prediction=sample",
            "diffusion.lr=0.002",
            "model.fusion=concat",
            "model.fusion_levels=[bottleneck,decoder]",
            "text.lr_scale=10",
            "train.batch_size=8",
            "train.steps=400",
            "train.ckpt_every=400",
        ],
    )
    ckpt = train(cfg, cohort, tmp_path / "run", progress=False)
    gen = Generator(ckpt)
    tpl = gen.template
    co = Cohort.open(cohort, gen.cfg.data)
    rows = co.rows()
    to_male, to_female, null = ([parse_edit(e, tpl)] for e in ("sex=M", "sex=F", "blood_group=O"))
    effect, nulls = [], []
    for sid in co.ids[:8]:
        image, mask = co.load(sid)
        prep = gen.pre.prepare(image, mask)
        lung = np.isin(np.asarray(mask.array), [1, 2])
        row = apply_edits(rows[sid], to_male, tpl)
        shape = tuple(prep.image.shape[-3:])

        def hu(r, noise, prep=prep):
            return np.asarray(gen.to_hu(gen.generate(prep, tpl.render(r), noise), prep).array)

        for k in range(2):
            noise = subject_noise(shape, sid, k)
            fac = hu(row, noise)
            effect.append(float((hu(apply_edits(row, to_female, tpl), noise) - fac)[lung].mean()))
            nulls.append(float((hu(apply_edits(row, null, tpl), noise) - fac)[lung].mean()))
    eff, nul = float(np.mean(effect)), float(np.mean(nulls))
    assert eff < 0 and abs(eff) >= 0.25 * abs(PLANTED), (eff, nul)
    assert abs(nul) < abs(eff) / 4, (eff, nul)
    assert sum(e < 0 for e in effect) >= 0.9 * len(effect), effect
