"""Seconds per training iteration, per generated patch, and peak memory, for each family
and fusion kind, with the mask-only baseline of the same run as the reference.

For every shipped config ``{family}-{fusion}`` (``gan-*``, ``diffusion-*``) and every size
(default ``64x64x32:b2``, the published patch and batch, and ``128x128x64:b1``):

* ``train s/it``: one full training iteration, median of ``--iters`` timed calls after
  ``--warmup`` untimed ones.  GAN: one discriminator update and one generator update
  (``GanProcess.train_step`` with the two Adam optimisers of ``make_gan_optimizers``).
  Diffusion: the family process's ``training_loss``, backward, one AdamW
  step (the optimiser of the training loop).  Gradient clipping, EMA and data loading
  are left out: they are the same for every fusion kind and small next to the networks.
* ``eval s``: one network evaluation for ONE patch under ``torch.no_grad``.  GAN: the
  generator (``GanProcess.generate``).  Diffusion: one denoising step as the sampler
  calls it (``DiffusionProcess.model_fn`` with the config's ``guidance_scale``, so a text
  model with classifier-free guidance evaluates a batch of 2: conditional and null).
* ``patch s``: seconds per generated patch: ``eval s`` for the GAN, ``eval s x
  diffusion.sample_steps`` for diffusion (implied; sampler arithmetic is negligible).
* ``eval GFLOP``: floating-point operations of one evaluation, counted by torch's flop
  counter on a ``meta``-device copy of the model (free; independent of the machine's
  load, so it explains ratios that a shared machine blurs).
* ``busy`` (CPU): process CPU time / (wall time x threads) of the timed training calls;
  well under 100% means the case waited for cores.
* ``peak MiB``: on CUDA ``torch.cuda.max_memory_allocated`` of the case; on CPU the peak
  resident set size (``ru_maxrss``) of a fresh child process that ran only that case,
  so peaks do not accumulate across cases.  It includes the child's Python + torch +
  MONAI import footprint, which is printed under the table.
* ``x base``: ratio to the mask-only config of the same family and size in the same run
  (always measured, even when ``--fusions`` does not name it): the number that matters
  on a shared machine, where absolute timings drift.

A second table sets the 64x64x32 cases beside the published implementation's figures,
measured on the project's 2-core CPU (meaningful only on that machine class), with
``speedup = published / ours`` and the issue's targets (3x per training iteration and per
GAN patch, 15x per diffusion patch; quality is not measured here).

Inputs are random: images in ``[-1, 1]``, a random 3-channel one-hot mask, and a random
text condition at MiniLM width (384, ~40 tokens, as the shipped configs use MiniLM).

``--rounds N`` repeats every case N times, interleaved, so a change of load during the run
hits all cases alike.  ``--json PATH`` keeps the raw numbers; ``--load PATH`` (repeatable)
prints the tables of saved runs again, merged.  The file's rows are typed in
:mod:`unveil.records.benchmark` (written and read there).  See ``benchmarks/README.md``.

Usage::

    python benchmarks/train_step.py --sizes 64x64x32:b2 --iters 2 --warmup 1
    python benchmarks/train_step.py --device cuda --amp bf16 --markdown

Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _common
from _common import format_table, median, resolve_device

FAMILIES: tuple[str, ...] = ("gan", "diffusion")
#: Short fusion names (as in the config file names) -> ``model.fusion`` of those configs.
FUSIONS: dict[str, str] = {
    "maskonly": "none",
    "concat": "concat",
    "affine": "affine",
    "crossattn": "cross_attention",
}
BASELINE = "maskonly"
DEFAULT_SIZES = "64x64x32:b2,128x128x64:b1"
PUBLISHED_SHAPE = (64, 64, 32)

#: The published implementation on the project's 2-core CPU (issue 4): GAN with affine
#: fusion, 79 M parameters with its discriminator, 8.0 s per training iteration at batch 2
#: and 1.2 s per generated patch; diffusion UNet, 55 M parameters, 12.5 s per training
#: step at batch 1, 4.6 s per denoising step, 250 steps per patch (about 19 minutes).
PUBLISHED: dict[str, dict[str, float]] = {
    "gan": {"params": 79e6, "train_s": 8.0, "train_batch": 2, "eval_s": 1.2, "steps": 1},
    "diffusion": {"params": 55e6, "train_s": 12.5, "train_batch": 1, "eval_s": 4.6, "steps": 250},
}
#: Speedups the issue asks for (published / ours), per training iteration and per patch.
TARGETS: dict[str, dict[str, float]] = {
    "gan": {"train": 3.0, "patch": 3.0},
    "diffusion": {"train": 3.0, "patch": 15.0},
}


@dataclass(frozen=True)
class Size:
    """A patch shape ``(D, H, W)`` (the config's ``patch_size`` order) and a batch size."""

    shape: tuple[int, int, int]
    batch: int

    @property
    def label(self) -> str:
        return "x".join(map(str, self.shape))


def parse_sizes(text: str) -> list[Size]:
    """``"64x64x32:b2,128x128x64:b1"`` -> sizes; ``:bN`` is optional (batch 1).

    Raises:
        ValueError: with one sentence saying what is wrong and the expected form.
    """
    sizes = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        shape_s, _, batch_s = item.partition(":")
        try:
            shape = tuple(int(v) for v in shape_s.lower().split("x"))
            batch = int(batch_s.lower().removeprefix("b")) if batch_s else 1
        except ValueError:
            shape, batch = (), 0
        if len(shape) != 3 or min(shape) < 1 or batch < 1:
            raise ValueError(
                f"size '{item}' is not of the form DxHxW:bN with positive integers "
                "(for example 64x64x32:b2)."
            )
        sizes.append(Size(shape, batch))  # type: ignore[arg-type]
    if not sizes:
        raise ValueError("--sizes is empty; give at least one size such as 64x64x32:b2.")
    return sizes


def _parse_list(text: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise ValueError(f"--{what} '{text}' must be a comma list of: {', '.join(allowed)}.")
    return items


@dataclass
class CaseSpec:
    """Everything one measurement needs; travels to the child process as JSON."""

    family: str
    fusion: str
    shape: tuple[int, int, int]
    batch: int
    device: str = "cpu"
    threads: int = 0
    amp: str = "none"
    iters: int = 3
    warmup: int = 1
    overrides: list[str] = field(default_factory=list)
    text_width: int = 384
    text_tokens: int = 40
    seed: int = 0

    @property
    def config(self) -> str:
        return f"{self.family}-{self.fusion}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CaseSpec:
        d = json.loads(text)
        d["shape"] = tuple(d["shape"])
        return cls(**d)


# ---------------------------------------------------------------------- one measurement


def random_inputs(spec: CaseSpec, mask_channels: int, text: bool, device):
    """Random ``(real (B,1,D,H,W) in [-1,1], mask (B,M,D,H,W) one-hot, cond or None)``.

    Drawn from a seeded CPU generator and then moved, so every config of a run sees the
    same numbers on any device.  The text condition has ``text_tokens`` tokens of width
    ``text_width``; the second sample is padded (fewer real tokens) so the masked paths run.
    """
    import torch

    from unveil.conditioning import TextCondition

    g = torch.Generator().manual_seed(spec.seed)
    b, shape = spec.batch, spec.shape
    real = torch.rand((b, 1, *shape), generator=g) * 2 - 1
    labels = torch.randint(0, mask_channels + 1, (b, *shape), generator=g)
    # Background (0) has no channel, as in unveil.data.preprocess.one_hot.
    mask = torch.stack([labels == v for v in range(1, mask_channels + 1)], 1).float()
    cond = None
    if text:
        n, e = spec.text_tokens, spec.text_width
        tokens = torch.randn((b, n, e), generator=g)
        lengths = torch.tensor([n - (i % 2) * (n // 4) for i in range(b)])
        token_mask = torch.arange(n)[None, :] < lengths[:, None]
        pooled = torch.randn((b, e), generator=g)
        cond = TextCondition(tokens, token_mask, pooled, None).to(device)
    return real.to(device), mask.to(device), cond


def measure_case(spec: CaseSpec) -> dict:
    """Run one case in this process and return its measurements (seconds, MiB, counts).

    The CPU peak memory is this process's high-water mark, so call it in a fresh process
    (see :func:`run_case`) unless peaks are not wanted.
    """
    import torch

    from unveil.config import load_config, resolve_config_path
    from unveil.data.preprocess import mask_channel_names
    from unveil.model import ModelMeta, build_models
    from unveil.nn.build import count_parameters

    import_rss = _common.peak_rss_mib()
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else None

    cfg = load_config(resolve_config_path(spec.config), spec.overrides)
    channels = mask_channel_names(cfg.data)
    meta = ModelMeta(
        mask_channels=channels,
        image_channels=1,
        encoder_name=cfg.text.encoder,
        encoder_identity="benchmark: random embeddings",
        encoder_width=spec.text_width,
        encoder_pooled_width=spec.text_width,
        template={},
        template_identity="",
    )
    # build_models draws its initial weights from the global RNG (it takes no generator);
    # seeding it keeps the weights, hence any data-dependent timing, reproducible.
    torch.manual_seed(spec.seed)
    gen, disc = build_models(cfg, meta)
    gen.to(device).train()
    if disc is not None:
        disc.to(device).train()
    text_on = cfg.model.fusion != "none"
    real, mask, cond = random_inputs(spec, len(channels), text_on, device)

    def amp():
        if spec.amp == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    out: dict = {
        "config": spec.config,
        "family": spec.family,
        "fusion": spec.fusion,
        "shape": list(spec.shape),
        "batch": spec.batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "amp": spec.amp,
        "pid": os.getpid(),
        "params_g": count_parameters(gen),
        "params_d": count_parameters(disc) if disc is not None else 0,
    }
    one = slice(0, 1)
    cond1 = cond.index(one) if cond is not None else None

    if cfg.model.family == "gan":
        from unveil.generative.gan import GanProcess, make_gan_optimizers

        process = GanProcess(cfg.gan)
        opt_g, opt_d = make_gan_optimizers(gen, disc, cfg.gan)
        g = torch.Generator().manual_seed(spec.seed + 1)
        noise = None
        if cfg.model.noise_input:
            noise = torch.randn((spec.batch, 1, *spec.shape), generator=g).to(device)

        def train_iter() -> None:
            # train_step runs forward, backward and both optimiser steps in one call, so
            # under --amp the backward is inside autocast too (fine for bf16: no scaler).
            with amp():
                process.train_step(gen, disc, opt_g, opt_d, real, mask, cond, noise)

        out["train_s"], out["train_cpu_s"] = _common.time_calls(
            train_iter, spec.warmup, spec.iters, sync
        )
    else:
        from unveil.generative.registry import family_for

        # DDPM or rectified flow: the family's own process (registry), as training uses.
        process = family_for(cfg).process(cfg)
        # The optimiser of the training loop (unveil.train.loop): AdamW without decay.
        opt = torch.optim.AdamW(gen.parameters(), lr=cfg.diffusion.lr, weight_decay=0.0)
        g = torch.Generator(device=device).manual_seed(spec.seed + 1)

        def train_iter() -> None:
            # Prompt dropout happens on the host when the batch is drawn
            # (unveil.text.dropout), not in the step: the step takes the condition as is.
            with amp():
                loss, _ = process.training_loss(gen, real, mask, cond, generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out["train_s"], out["train_cpu_s"] = _common.time_calls(
            train_iter, spec.warmup, spec.iters, sync
        )

    gen.eval()
    evaluate, out["sample_steps"], out["evals_batch"] = make_eval(cfg, gen, mask[one], cond1)

    def eval_iter() -> None:
        with torch.no_grad(), amp():
            evaluate()

    out["eval_s"], out["eval_cpu_s"] = _common.time_calls(eval_iter, spec.warmup, spec.iters, sync)
    out["eval_gflop"] = count_eval_gflop(cfg, meta, spec)
    summarise(out)
    if cuda:
        out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_kind"] = "cuda max_memory_allocated"
    else:
        out["peak_mib"] = _common.peak_rss_mib()
        out["peak_kind"] = "process peak RSS"
    out["import_rss_mib"] = import_rss
    return out


def make_eval(cfg, gen, mask1, cond1) -> tuple[Callable[[], object], int, int]:
    """One network evaluation for one patch, as generation calls it.

    Args:
        cfg: the config the generator was built from.
        gen: the generator / denoiser.
        mask1: one patch's mask ``(1, M, D, H, W)``; its device is used for the inputs.
        cond1: its text condition (batch 1) or None.

    Returns:
        ``(fn, evaluations per patch, batch of one evaluation)``.  GAN: ``fn`` runs the
        generator once.  Diffusion: ``fn`` is one denoising step of the guided denoiser
        (``model_fn`` with ``diffusion.guidance_scale``: batch 2 when guidance is on) at
        a mid-chain timestep; a patch takes ``diffusion.sample_steps`` of them.
    """
    import torch

    shape = (1, 1, *mask1.shape[2:])  # (B, C, D, H, W): one single-channel patch
    if cfg.model.family == "gan":
        from unveil.generative.gan import GanProcess

        process = GanProcess(cfg.gan)
        noise = torch.zeros(shape, device=mask1.device) if cfg.model.noise_input else None
        return (lambda: process.generate(gen, mask1, cond1, noise)), 1, 1

    from unveil.generative.registry import family_for

    process = family_for(cfg).process(cfg)
    scale = cfg.diffusion.guidance_scale
    denoise = process.model_fn(gen, mask1, cond1, guidance_scale=scale)
    # The step's cost does not depend on the values: zeros and a mid-chain timestep.
    x_t = torch.zeros(shape, device=mask1.device)
    mid = process.num_timesteps // 2
    t = torch.full((1,), mid, device=mask1.device)
    t = t.long() if cfg.diffusion.process == "ddpm" else t.float()
    batch = 2 if (cond1 is not None and scale != 1.0) else 1
    return (lambda: denoise(x_t, t)), int(cfg.diffusion.sample_steps), batch


def count_eval_gflop(cfg, meta, spec: CaseSpec) -> float:
    """GFLOP of one :func:`make_eval` call, counted on the ``meta`` device (no compute).

    Independent of the machine and its load, so it explains a time ratio that a shared
    machine blurs.  ``torch.utils.flop_counter`` counts convolutions, matmuls and
    attention; norms and activations are not counted.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from unveil.model import build_models

    with torch.device("meta"):
        gen, _ = build_models(cfg, meta)
    gen.eval()
    text_on = cfg.model.fusion != "none"
    one = CaseSpec(**{**dataclasses.asdict(spec), "batch": 1})
    _, mask, cond = random_inputs(one, len(meta.mask_channels), text_on, "meta")
    evaluate, _, _ = make_eval(cfg, gen, mask, cond)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        evaluate()
    return counter.get_total_flops() / 1e9


def summarise(r: dict) -> dict:
    """Add the medians and the implied patch time to a result holding the raw lists."""
    r["train_med"] = median(r["train_s"])
    r["eval_med"] = median(r["eval_s"])
    r["patch_s"] = r["eval_med"] * r["sample_steps"]
    r["train_busy"] = sum(r["train_cpu_s"]) / (sum(r["train_s"]) * r["threads"])
    return r


def merge_rounds(rounds: list[dict]) -> dict:
    """One result from the same case measured in several rounds.

    Timed calls are pooled (the median is over all of them) and the peak is the largest;
    any failed round makes the case failed.
    """
    failed = [r for r in rounds if "error" in r]
    if failed:
        return failed[0]
    merged = dict(rounds[0])
    for key in ("train_s", "train_cpu_s", "eval_s", "eval_cpu_s"):
        merged[key] = [v for r in rounds for v in r[key]]
    merged["peak_mib"] = max(r["peak_mib"] for r in rounds)
    merged["import_rss_mib"] = max(r["import_rss_mib"] for r in rounds)
    merged["rounds"] = len(rounds)
    return summarise(merged)


def run_case(spec: CaseSpec, isolate: bool = True) -> dict:
    """Measure one case, in a fresh child process when ``isolate`` (the default).

    A failing case (out of memory, bad override) does not stop the run: the returned dict
    then holds ``error`` (one line) instead of measurements.
    """
    if not isolate:
        try:
            return measure_case(spec)
        except Exception as err:  # noqa: BLE001 - one failed case must not end the run
            return {
                "config": spec.config,
                "family": spec.family,
                "fusion": spec.fusion,
                "shape": list(spec.shape),
                "batch": spec.batch,
                "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}",
            }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec.to_json()]
    # The child's stderr (warnings, tracebacks) goes straight to ours; only its stdout,
    # which carries the result line, is captured.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    result = _common.parse_result(proc.stdout)
    if result is None:
        result = {"error": f"child process exited with status {proc.returncode} (see stderr)"}
    result.setdefault("config", spec.config)
    result.setdefault("family", spec.family)
    result.setdefault("fusion", spec.fusion)
    result.setdefault("shape", list(spec.shape))
    result.setdefault("batch", spec.batch)
    return result


def _child(spec_json: str) -> int:
    spec = CaseSpec.from_json(spec_json)
    try:
        result = measure_case(spec)
    except Exception as err:  # noqa: BLE001 - reported as the case's result, run goes on
        import traceback

        traceback.print_exc(file=sys.stderr)
        result = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    _common.emit_result(result)
    return 0 if "error" not in result else 1


# ---------------------------------------------------------------------- tables


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def _ratio(x: float | None, ref: float | None) -> str:
    if x is None or not ref:
        return "-"
    return f"{x / ref:.2f}x"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n else "-"


def _baselines(results: list[dict]) -> dict[tuple, dict]:
    return {
        (r["family"], tuple(r["shape"]), r["batch"]): r
        for r in results
        if r["fusion"] == BASELINE and "error" not in r
    }


def main_table(results: list[dict], markdown: bool = False) -> str:
    """One row per case: parameters, seconds, peak memory, ratios to the baseline."""
    base = _baselines(results)
    heads = [
        "config",
        "size",
        "B",
        "G params",
        "D params",
        "train s/it",
        "x base",
        "busy",
        "eval s",
        "eval GFLOP",
        "patch s",
        "x base",
        "peak MiB",
        "x base",
    ]
    rows = []
    for r in results:
        head = [r["config"], "x".join(map(str, r["shape"])), str(r["batch"])]
        if "error" in r:  # the message is printed under the table
            rows.append([*head, "failed", *(["-"] * 10)])
            continue
        b = base.get((r["family"], tuple(r["shape"]), r["batch"]))
        rows.append(
            [
                *head,
                _params(r["params_g"]),
                _params(r["params_d"]),
                _s(r["train_med"]),
                _ratio(r["train_med"], b and b["train_med"]),
                f"{100 * r['train_busy']:.0f}%" if r["device"] == "cpu" else "-",
                _s(r["eval_med"]),
                f"{r['eval_gflop']:.1f}",
                _s(r["patch_s"]),
                _ratio(r["patch_s"], b and b["patch_s"]),
                f"{r['peak_mib']:.0f}",
                _ratio(r["peak_mib"], b and b["peak_mib"]),
            ]
        )
    return format_table(heads, rows, markdown=markdown, left=2)


def published_table(results: list[dict], markdown: bool = False) -> str | None:
    """The published-shape cases beside the published 2-core CPU figures, or None.

    ``speedup = published / ours``.  The published diffusion figure is at batch 1; at
    another batch the training speedup is per sample (marked ``*``).
    """
    heads = [
        "config",
        "B",
        "params",
        "pub params",
        "train s/it",
        "pub",
        "speedup",
        "eval s",
        "pub",
        "speedup",
        "patch s",
        "pub",
        "speedup",
        "targets",
    ]
    rows = []
    for r in results:
        if tuple(r["shape"]) != PUBLISHED_SHAPE or "error" in r:
            continue
        pub, target = PUBLISHED[r["family"]], TARGETS[r["family"]]
        pub_patch = pub["eval_s"] * pub["steps"]
        if r["batch"] == pub["train_batch"]:
            train_speed, mark = pub["train_s"] / r["train_med"], ""
        else:  # per sample: published s/sample over ours
            train_speed = (pub["train_s"] / pub["train_batch"]) / (r["train_med"] / r["batch"])
            mark = "*"
        eval_speed = pub["eval_s"] / r["eval_med"]
        patch_speed = pub_patch / r["patch_s"]
        ok_train = "ok" if train_speed >= target["train"] else "NO"
        ok_patch = "ok" if patch_speed >= target["patch"] else "NO"
        rows.append(
            [
                r["config"],
                str(r["batch"]),
                _params(r["params_g"] + r["params_d"]),
                _params(int(pub["params"])),
                _s(r["train_med"]),
                _s(pub["train_s"]) + ("@b1" if mark else ""),
                f"{train_speed:.2f}x{mark}",
                _s(r["eval_med"]),
                _s(pub["eval_s"]),
                f"{eval_speed:.2f}x",
                _s(r["patch_s"]),
                _s(pub_patch),
                f"{patch_speed:.2f}x",
                f"train {ok_train} ({target['train']:g}x), patch {ok_patch} ({target['patch']:g}x)",
            ]
        )
    if not rows:
        return None
    return format_table(heads, rows, markdown=markdown, left=1)


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes", default=DEFAULT_SIZES, help=f"comma list of DxHxW:bN (default {DEFAULT_SIZES})"
    )
    p.add_argument("--families", default=",".join(FAMILIES), help="gan,diffusion (default both)")
    p.add_argument(
        "--fusions",
        default=",".join(FUSIONS),
        help="comma list of maskonly,concat,affine,crossattn (default all); the "
        "maskonly baseline is always added",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--iters", type=int, default=3, help="timed calls per measurement (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every case this many times, interleaved (fresh process each time); "
        "the median pools the timed calls of all rounds",
    )
    p.add_argument(
        "--amp",
        default="none",
        choices=["none", "bf16"],
        help="bf16 autocast of training and evaluation (GPUs; CPUs with AMX or AVX512-BF16, where oneDNN runs bf16 convolutions about 2x faster than float32)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to every config (repeatable), e.g. "
        "model.channels=[32,64,128]",
    )
    p.add_argument(
        "--text-width",
        type=int,
        default=384,
        help="encoder width of the random text condition (MiniLM: 384)",
    )
    p.add_argument("--text-tokens", type=int, default=40, help="tokens in the text condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure every case in this process (faster start; CPU peak memory "
        "then accumulates across cases and is not per case)",
    )
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--json", metavar="PATH", help="also write every measurement to PATH")
    p.add_argument(
        "--load",
        action="append",
        metavar="PATH",
        help="print the tables of results saved with --json instead of measuring "
        "(repeatable: merges runs; ratios still use each family's baseline)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def make_cases(args: argparse.Namespace, device: str) -> list[CaseSpec]:
    """Cases in run order: per size, per family, the baseline first."""
    sizes = parse_sizes(args.sizes)
    families = _parse_list(args.families, FAMILIES, "families")
    fusions = _parse_list(args.fusions, tuple(FUSIONS), "fusions")
    fusions = [BASELINE] + [f for f in fusions if f != BASELINE]
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        raise ValueError("--iters and --rounds must be at least 1 and --warmup at least 0.")
    return [
        CaseSpec(
            family,
            fusion,
            size.shape,
            size.batch,
            device,
            args.threads,
            args.amp,
            args.iters,
            args.warmup,
            list(args.overrides),
            args.text_width,
            args.text_tokens,
            args.seed,
        )
        for size in sizes
        for family in families
        for fusion in fusions
    ]


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return _common.cpu_name()


def measure_all(cases: list[CaseSpec], rounds: int, isolate: bool) -> list[dict]:
    """Measure every case ``rounds`` times, interleaved; one merged result per case.

    Rounds interleave the cases (A B C, A B C) so that a change in the machine's load
    during the run hits every case alike instead of one of them.  Progress to stderr.
    """
    per_case: list[list[dict]] = [[] for _ in cases]
    for rnd in range(rounds):
        for i, spec in enumerate(cases):
            label = (
                f"[{rnd * len(cases) + i + 1}/{rounds * len(cases)}] {spec.config} "
                f"{'x'.join(map(str, spec.shape))} b{spec.batch}"
            )
            if per_case[i] and "error" in per_case[i][-1]:
                continue  # failed in an earlier round: do not pay for it again
            print(f"{label} ...", file=sys.stderr, flush=True)
            r = run_case(spec, isolate=isolate)
            if "error" in r:
                print(f"{label} failed: {r['error']}", file=sys.stderr, flush=True)
            else:
                print(
                    f"{label}: train {r['train_med']:.3f} s/it, eval {r['eval_med']:.3f} s, "
                    f"patch {r['patch_s']:.2f} s, peak {r['peak_mib']:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            per_case[i].append(r)
    return [merge_rounds(rounds_of_case) for rounds_of_case in per_case]


def run_info(args: argparse.Namespace, device: str, results: list[dict]) -> dict:
    """What the header line states: date, device, torch, threads, settings."""
    import torch

    ok = [r for r in results if "error" not in r]
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "device": device,
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "threads": ok[0]["threads"] if ok else args.threads,
        "amp": args.amp,
        "warmup": args.warmup,
        "iters": args.iters,
        "rounds": args.rounds,
        "isolated": not args.no_isolate,
    }


def header(info: dict) -> str:
    return (
        f"train_step benchmark, {info['date']}: {info['device']} ({info['device_name']}), "
        f"torch {info['torch']}, {info['threads']} threads, amp {info['amp']}, warmup "
        f"{info['warmup']}, median of {info['iters']} timed calls x {info['rounds']} round(s)"
    )


def report(results: list[dict], infos: list[dict], markdown: bool = False) -> str:
    """The header line(s), the main table with its notes, and the published comparison."""
    ok = [r for r in results if "error" not in r]
    lines = [header(i) for i in infos]
    lines += ["", main_table(results, markdown=markdown), ""]
    steps = sorted({str(r["sample_steps"]) for r in ok if r["family"] == "diffusion"})
    lines += [
        "eval s: one network evaluation for one patch (GAN: the generator; diffusion: one "
        "denoising step, a batch of 2 under classifier-free guidance).",
        "patch s: GAN eval s; diffusion eval s x sample_steps"
        + (f" ({', '.join(steps)})." if steps else "."),
        "x base: ratio to the maskonly config of the same family and size in the same run.",
        "eval GFLOP: floating-point operations of one evaluation (torch flop counter on the "
        "meta device: convolutions, matmuls, attention), independent of the machine's load.",
    ]
    if any(r["device"] == "cpu" for r in ok):
        lines.append(
            "busy: process CPU time / (wall time x threads) over the timed training calls; "
            "well under 100% means the case waited for cores (shared machine)."
        )
    if any(r["peak_kind"] == "process peak RSS" for r in ok):
        imp = median([r["import_rss_mib"] for r in ok])
        isolated = all(i.get("isolated", True) for i in infos)
        scope = "a fresh process per case" if isolated else "ONE process for all cases (cumulative)"
        lines.append(
            f"peak MiB: peak RSS of {scope}; includes ~{imp:.0f} MiB of Python/torch/MONAI imports."
        )
    if any(r["peak_kind"] != "process peak RSS" for r in ok):
        lines.append("peak MiB (cuda): torch.cuda.max_memory_allocated of the case.")
    lines += [
        f"failed: {r['config']} {'x'.join(map(str, r['shape']))} b{r['batch']}: {r['error']}"
        for r in results
        if "error" in r
    ]
    pub = published_table(results, markdown=markdown)
    if pub is not None:
        lines += [
            "",
            "Against the published implementation (its figures: 2-core CPU, 64x64x32; "
            "speedup = published / ours; meaningful only on that CPU class):",
            "",
            pub,
        ]
        if any(
            r["batch"] != PUBLISHED[r["family"]]["train_batch"]
            for r in ok
            if tuple(r["shape"]) == PUBLISHED_SHAPE
        ):
            lines.append("* per sample: the published figure is at another batch size.")
    return "\n".join(lines)


def load_results(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """Results and run infos from files written by ``--json`` (to merge runs in one table);
    ``ValueError`` (one sentence naming the file and the field) for a file that is not one."""
    from unveil.errors import DataError
    from unveil.records.benchmark import read_train_step

    results, infos = [], []
    for path in paths:
        try:
            record = read_train_step(path)
        except DataError as err:
            raise ValueError(f"--load {err}") from None
        results += record.rows()
        infos.append(record.info.model_dump())
    return results, infos


def save_results(path: str, info: dict, args: argparse.Namespace, results: list[dict]) -> None:
    """Write ``--json PATH`` through :mod:`unveil.records.benchmark` (read by ``--load``)."""
    from unveil.records.benchmark import TrainStepResults, write_train_step

    record = {"info": info, "args": vars(args), "results": results}
    write_train_step(path, TrainStepResults.model_validate(record))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return _child(args.child)
    try:
        if args.load:
            results, infos = load_results(args.load)
        else:
            device = resolve_device(args.device)
            cases = make_cases(args, device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.load:
        results = measure_all(cases, args.rounds, isolate=not args.no_isolate)
        infos = [run_info(args, device, results)]
        if args.json:
            save_results(args.json, infos[0], args, results)
    print(report(results, infos, markdown=args.markdown))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
