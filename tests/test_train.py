"""The training loop: both families run, checkpoints rebuild their model, resume is exact,
bad checkpoints get one sentence, and (slow) DDP on 2 CPU processes equals 1 process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unveil.cli import main
from unveil.config import load_config, resolve_config_path
from unveil.errors import CheckpointError, UnveilError
from unveil.model import load_model
from unveil.runtime.checkpoint import list_checkpoints, load_checkpoint
from unveil.train.loop import train

FAST = ["train.val_every=1000", "train.log_every=1"]


def _cfg(name: str, *overrides: str):
    return load_config(resolve_config_path(name), [*FAST, *overrides])


def _losses(run: Path) -> dict[int, dict]:
    lines = (run / "losses.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


@pytest.mark.parametrize("config", ["tiny-diffusion", "tiny-gan"])
def test_train_writes_checkpoints_that_rebuild_the_model(tiny_phantom, tmp_path, config):
    run = tmp_path / "run"
    last = train(
        _cfg(config, "train.ckpt_every=2", "train.keep_last=2"),
        tiny_phantom,
        run,
        steps=5,
        progress=False,
    )
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000004.pt", "ckpt-00000005.pt"]
    assert last.name == "ckpt-00000005.pt"
    ck = load_checkpoint(last)
    assert ck["step"] == 5
    assert set(ck["models"]) == (
        {"generator", "discriminator"} if config == "tiny-gan" else {"generator"}
    )
    assert {"sampler", "prompt", "torch_gen", "torch"} <= set(ck["rng"])
    # Checkpoints never carry subject ids or clinical rows.
    blob = last.read_bytes()
    assert b"sub-00" not in blob
    lm = load_model(last)
    assert lm.step == 5 and lm.cfg.model.family == ("gan" if config == "tiny-gan" else "diffusion")
    mask = torch.zeros(1, 3, 16, 16, 16)
    t = torch.zeros(1, dtype=torch.long) if lm.cfg.model.family == "diffusion" else None
    x = torch.zeros(1, 1, 16, 16, 16) if t is not None else None
    assert torch.isfinite(lm.generator(x, mask, t, None)).all()
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert all(
        torch.isfinite(torch.tensor(v))
        for r in losses.values()
        for k, v in r.items()
        if k != "step"
    )


@pytest.mark.parametrize(
    ("config", "schedule"),
    [("tiny-diffusion", "constant"), ("tiny-gan", "constant"), ("tiny-gan", "cosine")],
)
def test_resume_continues_exactly(tiny_phantom, tmp_path, config, schedule):
    cfg = _cfg(config, "train.ckpt_every=2", "train.steps=4", f"train.lr_schedule={schedule}")
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, tiny_phantom, full, steps=4, progress=False)
    train(cfg, tiny_phantom, part, steps=2, progress=False)
    train(cfg, tiny_phantom, part, steps=4, resume=True, progress=False)
    a, b = _losses(full), _losses(part)
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert a[step] == b[step], f"step {step}: {a[step]} != {b[step]}"
    wa = load_checkpoint(list_checkpoints(full)[-1])["models"]["generator"]
    wb = load_checkpoint(list_checkpoints(part)[-1])["models"]["generator"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lr_schedules():
    from unveil.train.loop import lr_factor

    assert [lr_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    cos = [lr_factor("cosine", s, 10) for s in range(10)]
    assert (
        cos[0] == 1.0
        and abs(cos[5] - 0.5) < 1e-12
        and all(a > b for a, b in zip(cos[:-1], cos[1:], strict=True))
    )
    assert [lr_factor("linear", s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    # Warm-up ramps linearly, then the decay spans the remaining steps.
    assert [lr_factor("linear", s, 6, warmup=2) for s in range(6)] == [
        0.5,
        1.0,
        1.0,
        0.75,
        0.5,
        0.25,
    ]
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor("step", 3, 10)


def test_cosine_schedule_reaches_the_optimizer(tiny_phantom, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg("tiny-gan", "train.steps=4", "train.lr_schedule=cosine", "train.ckpt_every=4")
    train(cfg, tiny_phantom, run, progress=False)
    groups = load_checkpoint(list_checkpoints(run)[-1])["optimizers"]["generator"]["param_groups"]
    # The last update (after 3 completed steps) used base * (1 + cos(3 pi / 4)) / 2.
    want = cfg.gan.lr_g * 0.5 * (1 + math.cos(math.pi * 3 / 4))
    assert all(abs(g["lr"] - want) < 1e-12 and g["base_lr"] == cfg.gan.lr_g for g in groups)


def test_refuses_to_overwrite_a_run_and_resume_needs_a_checkpoint(tiny_phantom, tmp_path):
    cfg = _cfg("tiny-diffusion")
    run = tmp_path / "run"
    with pytest.raises(UnveilError, match="found no checkpoint"):
        train(cfg, tiny_phantom, run, steps=1, resume=True, progress=False)
    train(cfg, tiny_phantom, run, steps=1, progress=False)
    with pytest.raises(UnveilError, match="already holds checkpoints"):
        train(cfg, tiny_phantom, run, steps=2, progress=False)


def test_corrupt_and_foreign_checkpoints_get_one_sentence(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    for path, fragment in ((bad, "truncated, overwritten"), (foreign, "not an unveil checkpoint")):
        with pytest.raises(CheckpointError, match=fragment):
            load_checkpoint(path)
        assert main(["inspect", str(path)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1


def test_cli_train_and_inspect(tiny_phantom, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            "tiny-gan",
            "--cohort",
            str(tiny_phantom),
            "--out",
            str(run),
            "--steps",
            "1",
            "--no-progress",
            *FAST,
        ]
    )
    assert rc == 0
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "family       gan" in out and "template phantom" in out
    assert (
        main(
            [
                "train",
                "--config",
                "tiny-gan",
                "--cohort",
                str(tiny_phantom),
                "--out",
                str(tmp_path / "r2"),
                "model.fusion=sideways",
            ]
        )
        == 2
    )
    assert "model.fusion" in capsys.readouterr().err


def _torchrun(nproc: int, cohort: Path, out: Path, batch: int, config: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "unveil",
        "train",
        "--config",
        config,
        "--cohort",
        str(cohort),
        "--out",
        str(out),
        "--steps",
        "3",
        "--no-progress",
        f"train.batch_size={batch}",
        *FAST,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.distributed
@pytest.mark.parametrize("config", ["tiny-diffusion", "tiny-gan"])
def test_ddp_two_processes_equal_one_process_on_the_same_global_batch(
    tiny_phantom, tmp_path, config
):
    _torchrun(1, tiny_phantom, tmp_path / "one", batch=2, config=config)
    _torchrun(2, tiny_phantom, tmp_path / "two", batch=1, config=config)
    wa = load_checkpoint(list_checkpoints(tmp_path / "one")[-1])["models"]["generator"]
    wb = load_checkpoint(list_checkpoints(tmp_path / "two")[-1])["models"]["generator"]
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst < 1e-5, worst
    # Only rank 0 wrote: one loss line per step.
    assert len((tmp_path / "two" / "losses.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("config", ["tiny-diffusion", "tiny-gan"])
def test_bf16_autocast_and_gradient_accumulation_run(tiny_phantom, tmp_path, config):
    cfg = _cfg(config, "train.amp=bf16", "train.grad_accum=2")
    train(cfg, tiny_phantom, tmp_path / "run", steps=2, progress=False)
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == [1, 2]
    assert all(
        torch.isfinite(torch.tensor(v))
        for r in losses.values()
        for k, v in r.items()
        if k != "step"
    )


def test_fp16_on_cpu_is_refused_with_a_sentence(tiny_phantom, tmp_path):
    with pytest.raises(UnveilError, match="fp16 needs a GPU"):
        train(
            _cfg("tiny-diffusion", "train.amp=fp16"),
            tiny_phantom,
            tmp_path / "run",
            steps=1,
            progress=False,
        )
