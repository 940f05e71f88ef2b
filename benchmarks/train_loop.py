"""Seconds per step of the real training loop against the bare network step of the same
config: what data, prompts, copies, logging, EMA and checkpoints cost around the networks.

For every config of ``--configs`` (shipped names or YAML files):

* **loop**: ``unveil.train.loop.train`` on a phantom cohort (built once per size under
  ``--work``), everything included: patch sampling, prompt drawing and dropout, the text
  embedding cache, host-to-device copies, the family step, EMA, the loss log (brought to
  the host every ``train.log_every`` steps), TensorBoard, checkpoints.  Timestamps come
  from ``train``'s ``on_step`` hook; the steady state is the time from the end of step
  ``--skip`` to the end of step ``--steps - 1`` (setup, the first steps and the final
  checkpoint excluded), over the steps in between.  Checkpoint saves are timed on their
  own (the benchmark wraps them); any that fall inside the window are taken out of it and
  all are added back amortised as configured (``ckpt s / train.ckpt_every``), so a short
  benchmark run weighs them as the full run does.  Validation (a whole-volume generation
  every ``train.val_every`` steps and at the end) is skipped unless ``--validate``: it is
  generation, not training, and on a CPU it can outlast the benchmark (the realistic
  configs' 233^3 phantom validation subject took 25 minutes on the 2-core CPU); with
  ``--validate`` it is timed and amortised like the checkpoints.
* **bare**: the same family step (``GanFamily.step`` / ``DiffusionFamily.step``, i.e. the
  loop's optimiser steps, gradient scaling and clipping, noise and timestep draws) on ONE
  pre-built batch already on the device (random images and masks, the real encoder's
  embedding of a phantom prompt), repeated, on a second copy of the models.  Bare blocks of
  ``--bare-block`` steps run interleaved with the loop, from its ``on_step`` hook: at the
  start of the window and at the end of each of ``--rounds`` segments of it (the device is
  synchronised only there), so a change of load on a shared machine hits bare and loop
  alike; their time is taken out of the loop's.  Median per step over the blocks.
* **loop eff** = bare / loop (1.0: the loop costs nothing beyond the networks).

Configs whose text template or encoder a phantom cannot feed (the realistic configs use
the AIIB23 template and MiniLM) run with ``text.template=phantom text.encoder=features``
(stated under the table): the loop's per-step text cost is a cache lookup either way.

The last line of the output is ``loop efficiency: X``, the smallest over the configs.

``--patch-read SIZE`` instead times reading one training patch three ways on a
``SIZE^3`` phantom subject: from memory, from the memory-mapped on-disk cache of
``unveil.data.stream`` and from MONAI's ``PersistentDataset`` (which loads the whole
cached item per access).

Usage::

    python benchmarks/train_loop.py --configs demo,demo-diffusion --device cpu --threads 2
    python benchmarks/train_loop.py --configs demo,demo-diffusion,gan-affine --device cuda
    python benchmarks/train_loop.py --patch-read 128

Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common
from _common import format_table, median, resolve_device

DEFAULT_CONFIGS = "demo,demo-diffusion"
#: Overrides for configs a phantom cohort cannot feed as they are (see the docstring).
PHANTOM_TEXT = ["text.template=phantom", "text.encoder=features"]


def load_bench_config(name: str, device: str, overrides: list[str]):
    """The config ``name`` with the phantom text settings when needed, the device, and
    ``overrides`` (applied last).  Returns ``(cfg, the overrides used)``."""
    from unveil.config import load_config, resolve_config_path

    path = resolve_config_path(name)
    cfg = load_config(path, [f"train.device={device}", *overrides])
    extra = []
    if cfg.text.template != "phantom" or cfg.text.encoder.split(":")[0] != "features":
        extra = list(PHANTOM_TEXT)
    used = [f"train.device={device}", *extra, *overrides]
    return load_config(path, used), extra


def phantom_size(cfg) -> int:
    """Smallest phantom grid (>= 16, divisible by 8) holding a patch at the config's spacing.

    The phantom spans 350 mm; with ``preprocess.spacing`` set the preprocessed grid is
    350 / spacing voxels whatever the phantom's own size, so 64 voxels suffice there.
    """
    patch = max(cfg.preprocess.patch_size)
    if cfg.preprocess.spacing is not None:
        return max(16, -(-min(patch, 64) // 8) * 8)
    return max(16, -(-patch // 8) * 8)


def ensure_phantom(work: Path, size: int, n: int) -> Path:
    from unveil.data.phantom import make_phantom

    path = work / f"phantom-{size}-{n}"
    if not path.exists():
        print(f"building a {n}-subject {size}^3 phantom in {path} ...", file=sys.stderr, flush=True)
        make_phantom(path, n=n, size=size, seed=0)
    return path


# ---------------------------------------------------------------------- measurements


def bare_batch(cfg, cohort: Path, device):
    """One batch as the loop feeds the family step, built once: random images in
    ``[-1, 1]``, a one-hot mask with the config's channels, the real encoder's embedding
    of the first phantom prompts (``None`` for a mask-only model is still passed as a
    condition: the loop always passes one)."""
    import torch

    from unveil.conditioning import TextCondition
    from unveil.data.cohort import Cohort
    from unveil.data.preprocess import Preprocessor
    from unveil.text.cache import EmbeddingCache
    from unveil.text.encoders import build_encoder
    from unveil.text.template import load_template

    channels = Preprocessor(cfg.preprocess, cfg.data).mask_channels
    b, shape = cfg.train.batch_size, tuple(cfg.preprocess.patch_size)
    g = torch.Generator().manual_seed(0)
    real = torch.rand((b, 1, *shape), generator=g) * 2 - 1
    labels = torch.randint(0, len(channels) + 1, (b, *shape), generator=g)
    mask = torch.stack([labels == v for v in range(1, len(channels) + 1)], 1).float()
    template = load_template(cfg.text.template)
    encoder = build_encoder(cfg.text.encoder, max_length=cfg.text.max_length)
    rows = list(Cohort.open(cohort, cfg.data).rows().values())
    enc = EmbeddingCache(encoder).get([template.render(rows[i % len(rows)]) for i in range(b)])
    cond = TextCondition(enc.tokens, enc.mask, enc.pooled, torch.zeros(b, dtype=torch.bool))
    return (real.to(device), mask.to(device), cond.to(device)), channels, encoder


def bare_stepper(cfg, cohort: Path, device_name: str, block: int):
    """A function running ``block`` bare family steps (then a device sync), and the sync.

    The family is built as the loop builds it (same config, models, optimisers), but apart
    from the loop's own: timing it does not disturb the run being measured.
    """
    import torch

    from unveil.generative.registry import family_for
    from unveil.model import ModelMeta, build_models

    device = torch.device(device_name)
    batch, channels, encoder = bare_batch(cfg, cohort, device)
    meta = ModelMeta(
        mask_channels=list(channels),
        image_channels=1,
        encoder_name=cfg.text.encoder,
        encoder_identity=encoder.identity,
        encoder_width=encoder.width,
        encoder_pooled_width=encoder.pooled_width,
        template={},
        template_identity="",
    )
    torch.manual_seed(cfg.train.seed)
    gen, disc = build_models(cfg, meta)
    gen.to(device).train()
    if disc is not None:
        disc.to(device).train()
    family = family_for(cfg).trainer(cfg, gen, disc)
    g = torch.Generator().manual_seed(cfg.train.seed + 3)
    bs = cfg.train.batch_size
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def run_block() -> None:
        for _ in range(block):
            family.step(lambda: batch, g, bs, slice(0, bs), cfg, device)
        sync()

    return run_block, sync


def measure(
    cfg,
    cohort: Path,
    run: Path,
    device_name: str,
    steps: int,
    skip: int,
    rounds: int,
    block: int,
    validate: bool = False,
) -> dict:
    """Run ``train`` for ``steps`` steps with bare blocks interleaved (see the docstring).

    The window (end of step ``skip`` .. end of step ``steps - 1``) is cut into ``rounds``
    segments; a timed bare block runs at the start of the window and at the end of each
    segment, from the ``on_step`` hook, so bare and loop share the machine's load.  Bare
    blocks, checkpoint saves and validations inside the window are taken out of the loop's
    time; the device is synchronised only at the segment borders.
    """

    import unveil.train.loop as loop

    if not 0 <= skip < steps - rounds:
        raise ValueError(
            f"--skip {skip} must leave at least --rounds {rounds} steps below --steps {steps}."
        )
    last = steps - 1
    n = last - skip
    borders = {skip, last} | {skip + (n * i) // rounds for i in range(1, rounds)}
    run_block, sync = bare_stepper(cfg, cohort, device_name, block)
    run_block()  # warm-up: allocator, kernels, optimiser state
    stamps: dict[int, tuple[float, float]] = {}
    bare: list[tuple[float, float]] = []  # (wall, cpu) per bare step
    events: list[tuple[str, int, float]] = []  # (kind, step, seconds) taken out of the loop

    def on_step(step: int) -> None:
        if step not in borders:
            return
        sync()
        stamps[step] = (time.perf_counter(), time.process_time())
        t0, c0 = time.perf_counter(), time.process_time()
        run_block()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        bare.append((wall / block, cpu / block))
        if step != last:
            events.append(("bare", step + 1, wall))  # counted in the next segment

    def timed(kind: str, fn):
        def wrapper(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                step = args[3].step if kind == "ckpt" else args[9]
                events.append((kind, int(step), time.perf_counter() - t0))

        return wrapper

    if run.exists():
        shutil.rmtree(run)
    with contextlib.ExitStack() as stack:
        saved = (loop._save, loop._validate)
        stack.callback(
            lambda: (setattr(loop, "_save", saved[0]), setattr(loop, "_validate", saved[1]))
        )
        loop._save = timed("ckpt", saved[0])
        loop._validate = timed("val", saved[1] if validate else lambda *a, **k: None)
        t_start = time.perf_counter()
        loop.train(cfg, cohort, run, steps=steps, progress=False, on_step=on_step)
        total_s = time.perf_counter() - t_start
    (w0, c0), (w1, c1) = stamps[skip], stamps[last]
    inside = [s for _, step, s in events if skip < step <= last]
    inside_cpu = sum(c for c in (b[1] * block for b in bare[:-1]))
    window = (w1 - w0) - sum(inside)
    ckpt = [s for k, _, s in events if k == "ckpt"]
    val = [s for k, _, s in events if k == "val"] if validate else []
    ckpt_s = median(ckpt) if ckpt else 0.0
    val_s = median(val) if val else 0.0
    steady = window / n
    loop_s = steady + ckpt_s / cfg.train.ckpt_every + (val_s / cfg.train.val_every if val else 0.0)
    bare_s = [b[0] for b in bare]
    return {
        "bare_s": bare_s,
        "bare_cpu_s": [b[1] for b in bare],
        "bare_med": median(bare_s),
        "steady_s": steady,
        "loop_s": loop_s,
        "loop_cpu_s": (c1 - c0 - inside_cpu) / n,
        "ckpt_s": ckpt_s,
        "val_s": val_s,
        "n_ckpt": len(ckpt),
        "n_val": len(val),
        "window_steps": n,
        "total_s": total_s,
    }


def measure_config(name: str, args: argparse.Namespace, device: str, work: Path) -> dict:
    import torch

    cfg, extra = load_bench_config(name, device, args.overrides)
    size = args.phantom_size or phantom_size(cfg)
    cohort = ensure_phantom(work, size, args.subjects)
    label = f"{name} ({device})"
    out: dict = {
        "config": name,
        "device": device,
        "batch": cfg.train.batch_size,
        "patch": list(cfg.preprocess.patch_size),
        "amp": cfg.train.amp,
        "phantom": size,
        "subjects": args.subjects,
        "log_every": cfg.train.log_every,
        "ckpt_every": cfg.train.ckpt_every,
        "val_every": cfg.train.val_every,
        "text_overrides": extra,
        "threads": torch.get_num_threads(),
    }
    print(
        f"{label}: {args.steps} loop steps, {args.rounds + 1} bare blocks of {args.bare_block} "
        "steps interleaved ...",
        file=sys.stderr,
        flush=True,
    )
    run = work / f"run-{name}"
    out.update(
        measure(
            cfg,
            cohort,
            run,
            device,
            args.steps,
            args.skip,
            args.rounds,
            args.bare_block,
            args.validate,
        )  # fmt: skip
    )
    out["efficiency"] = out["bare_med"] / out["loop_s"]
    if device == "cpu":
        out["bare_busy"] = sum(out["bare_cpu_s"]) / (sum(out["bare_s"]) * out["threads"])
        out["loop_busy"] = out["loop_cpu_s"] / (out["steady_s"] * out["threads"])
    print(
        f"{label}: bare {out['bare_med']:.4g} s/step, loop {out['loop_s']:.4g} s/step, "
        f"efficiency {out['efficiency']:.3f}",
        file=sys.stderr,
        flush=True,
    )
    return out


# ---------------------------------------------------------------------- patch reads


def patch_read(size: int, iters: int, work: Path) -> list[dict]:
    """Seconds per patch read from memory, a memory-mapped cache entry, a PersistentDataset."""
    import numpy as np
    import torch
    from monai.data import PersistentDataset
    from monai.transforms import Compose, Transform

    from unveil.config import load_config, resolve_config_path
    from unveil.data.cohort import Cohort
    from unveil.data.preprocess import Preprocessor
    from unveil.data.stream import VolumeCache

    cohort = ensure_phantom(work, size, 4)
    cfg = load_config(resolve_config_path("demo"), [])
    sid = Cohort.open(cohort, cfg.data).ids[0]
    prepared = Preprocessor(cfg.preprocess, cfg.data).prepare(
        *Cohort.open(cohort, cfg.data).load(sid)
    )
    image, mask = prepared.image, prepared.mask
    p = (64, 64, 32) if size >= 64 else (size // 2,) * 3
    rng = np.random.default_rng(0)
    starts = [
        tuple(int(rng.integers(0, s - q + 1)) for s, q in zip(image.shape[1:], p, strict=True))
        for _ in range(iters)
    ]

    def sl(start):
        return (slice(None), *(slice(a, a + q) for a, q in zip(start, p, strict=True)))

    entry = VolumeCache(work / "patch-read-cache").put("x", image, mask)
    pds_dir = work / "patch-read-pds"
    shutil.rmtree(pds_dir, ignore_errors=True)

    # As PersistentDataset is used: items name a subject (cheap to hash), the deterministic
    # transforms (here: the preprocessing already done) are cached as one file per item.
    class Prepare(Transform):  # deterministic (a Transform, not Randomizable): cached
        def __call__(self, data):
            return {"image": image, "mask": mask}

    pds = PersistentDataset([{"id": sid}], transform=Compose([Prepare()]), cache_dir=pds_dir)
    pds[0]  # writes the cache file
    cached = sum(f.stat().st_size for f in pds_dir.iterdir())
    assert cached > (image.numel() + mask.numel()) * 4, "PersistentDataset cached no volume"

    def via_memory(start):
        return image[sl(start)].clone(), mask[sl(start)].clone()

    def via_map(start):
        return entry.image[sl(start)], entry.mask[sl(start)]

    def via_pds(start):
        item = pds[0]  # torch.load of the whole item, as every access does
        return item["image"][sl(start)], item["mask"][sl(start)]

    ref = via_memory(starts[0])
    for fn in (via_map, via_pds):
        got = fn(starts[0])
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    ways = (
        ("in memory", via_memory),
        ("memory map (unveil.data.stream)", via_map),
        ("MONAI PersistentDataset", via_pds),
    )
    volume_mb = (image.numel() + mask.numel()) * 4 / 1e6
    walls: dict[str, list[float]] = {name: [] for name, _ in ways}
    rounds = 3  # interleaved, so a change of load hits every way alike
    for _ in range(rounds):
        for name, fn in ways:
            it = itertools.cycle(starts)
            wall, _ = _common.time_calls(lambda fn=fn, it=it: fn(next(it)), 3, iters)
            walls[name] += wall
    rows = [{"way": name, "ms": 1e3 * median(walls[name])} for name, _ in ways]
    for r in rows:
        r["x memory"] = r["ms"] / rows[0]["ms"]
    print(
        f"patch read, {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {size}^3 phantom subject "
        f"(image + {mask.shape[0]}-channel mask, {volume_mb:.1f} MB float32), patch "
        f"{'x'.join(map(str, p))} ({(1 + mask.shape[0]) * int(np.prod(p)) * 4 / 1e6:.2f} MB), "
        f"median of {rounds} x {iters} reads (interleaved rounds, 3 warm-up reads each), warm "
        f"page cache, torch {torch.get_num_threads()} thread(s)"
    )
    print()
    print(
        format_table(
            ["way", "ms / patch", "x memory"],
            [[r["way"], f"{r['ms']:.3f}", f"{r['x memory']:.1f}x"] for r in rows],
        )
    )
    return rows


# ---------------------------------------------------------------------- report


def report(results: list[dict], info: dict, markdown: bool = False) -> str:
    heads = ["config", "device", "B", "patch", "amp", "bare s/step", "loop s/step", "ckpt s",
             "loop eff"]  # fmt: skip
    cpu = any(r["device"] == "cpu" for r in results)
    if cpu:
        heads.insert(7, "busy b/l")
    rows = []
    for r in results:
        row = [
            r["config"],
            r["device"],
            str(r["batch"]),
            "x".join(map(str, r["patch"])),
            r["amp"],
            f"{r['bare_med']:.4g}",
            f"{r['loop_s']:.4g}",
            f"{r['ckpt_s']:.3g}/{r['ckpt_every']}",
            f"{r['efficiency']:.3f}",
        ]
        if cpu:
            row.insert(
                7,
                f"{100 * r['bare_busy']:.0f}/{100 * r['loop_busy']:.0f}%"
                if "bare_busy" in r
                else "-",
            )
        rows.append(row)
    lines = [
        f"train_loop benchmark, {info['date']}: {info['device']} ({info['device_name']}), torch "
        f"{info['torch']}, {info['threads']} threads; loop: steps {info['skip']}..{info['steps'] - 1} "
        f"of {info['steps']} on a {info['subjects']}-subject phantom in {info['rounds']} "
        f"segments; bare: median of {info['rounds'] + 1} blocks of {info['bare_block']} steps "
        "interleaved with them",
        "",
        format_table(heads, rows, markdown=markdown, left=2),
        "",
        "bare: the family step on one batch already on the device; loop: unveil.train.loop.train "
        "in its steady state (data, prompts, copies, EMA, loss log every train.log_every steps), "
        "plus checkpoints and validation amortised as configured.",
        "ckpt s: one checkpoint save / train.ckpt_every.  loop eff = bare / loop.",
    ]
    if info.get("validate"):
        vals = ", ".join(f"{r['config']} {r['val_s']:.3g} s / {r['val_every']}" for r in results)
        lines.append(f"validation included, amortised: {vals}.")
    else:
        lines.append("validation (whole-volume generation) skipped: pass --validate to include it.")
    if cpu:
        lines.append(
            "busy b/l: process CPU time / (wall x threads) of the bare and the loop steps; well "
            "under 100% means waiting for cores (a shared machine)."
        )
    over = sorted({o for r in results for o in r["text_overrides"]})
    if over:
        names = ", ".join(r["config"] for r in results if r["text_overrides"])
        lines.append(f"{names}: run with {' '.join(over)} (a phantom has no AIIB23 table).")
    lines.append("")
    lines.append(f"loop efficiency: {min(r['efficiency'] for r in results):.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help=f"comma list (default {DEFAULT_CONFIGS})"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--steps", type=int, default=30, help="loop steps to run (default 30)")
    p.add_argument("--skip", type=int, default=5, help="steps left out at the start (default 5)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="loop segments; a bare block runs before, between and after them (default 3)",
    )
    p.add_argument("--bare-block", type=int, default=3, help="bare steps per block (default 3)")
    p.add_argument("--subjects", type=int, default=16, help="phantom subjects (default 16)")
    p.add_argument("--phantom-size", type=int, default=0, help="phantom grid (0: from the patch)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every config (repeatable)")  # fmt: skip
    p.add_argument("--validate", action="store_true",
                   help="run validation as configured and include it, amortised")  # fmt: skip
    p.add_argument("--work", help="folder for the phantoms and runs (default: a temporary one)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", metavar="PATH", help="also write the measurements to PATH")
    p.add_argument("--patch-read", type=int, default=0, metavar="SIZE",
                   help="time patch reads on a SIZE^3 phantom subject instead")  # fmt: skip
    p.add_argument("--patch-iters", type=int, default=30, help="timed reads per way and round")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    work_tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(work_tmp := tempfile.mkdtemp(prefix="unveil-train-loop-"))
    try:
        if args.patch_read:
            # One torch thread unless --threads: on the project's 2-core VM a 2-thread pool
            # made a strided 3 MB copy take 16 ms instead of 0.1-0.2 ms in some rounds (its
            # workers' wake-up, not the storage), which would blur the comparison.
            if args.threads == 0:
                torch.set_num_threads(1)
            patch_read(args.patch_read, args.patch_iters, work)
            return 0
        try:
            device = resolve_device(args.device)
            names = [c.strip() for c in args.configs.split(",") if c.strip()]
            if not names:
                raise ValueError("--configs is empty; name at least one config, e.g. demo.")
            if args.rounds < 1 or args.bare_block < 1:
                raise ValueError("--rounds and --bare-block must be at least 1.")
            if args.skip < 0 or args.steps - 1 - args.skip < args.rounds:
                raise ValueError(
                    "--steps must exceed --skip by more than --rounds (one step per segment at "
                    "least), and --skip must be 0 or more."
                )
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        results = [measure_config(name, args, device, work) for name in names]
        info = {
            "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "device": device,
            "device_name": torch.cuda.get_device_name(0)
            if device == "cuda"
            else _common.cpu_name(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "skip": args.skip,
            "subjects": args.subjects,
            "rounds": args.rounds,
            "bare_block": args.bare_block,
            "validate": args.validate,
        }
        if args.json:
            from unveil.fs import write_json

            write_json(args.json, {"info": info, "args": vars(args), "results": results})
        print(report(results, info, markdown=args.markdown))
        return 0
    finally:
        if work_tmp:
            shutil.rmtree(work_tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
