"""Helpers shared by the benchmark scripts: timing, peak memory, machine name, tables.

Benchmarks print tables and never assert timings (project rule); these helpers keep the
measurement conventions identical across scripts: median of timed calls after warm-up,
explicit device synchronisation, and peak memory read the same way everywhere.

Only the standard library is imported here, so a parent process that merely launches
measurement children stays light.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence

#: Prefix of the one stdout line that carries a child process's result as JSON.
RESULT_MARKER = "@@BENCH-RESULT@@ "


def time_calls(
    fn: Callable[[], object],
    warmup: int,
    iters: int,
    sync: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Call ``fn`` ``warmup`` times untimed, then ``iters`` times timed.

    Returns ``(wall, cpu)``: seconds per call on the wall clock and in process CPU time
    (all threads).  ``cpu / (wall * threads)`` near 1 means the call had its cores; much
    lower means it waited for them (a shared machine) or for a GPU.  ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read, because GPU kernels are
    asynchronous: without it the clock measures the launch, not the work.
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}.")
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    wall, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if sync is not None:
            sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (robust to one slow call on a shared machine)."""
    return float(statistics.median(values))


def peak_rss_mib() -> float:
    """Peak resident set size of *this* process so far, in MiB.

    ``ru_maxrss`` is a high-water mark that never goes down, so a fair per-case peak needs
    a fresh process per case.  Linux reports KiB, macOS bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def cpu_name() -> str:
    """Human-readable CPU model (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def emit_result(obj: dict) -> None:
    """Print ``obj`` as the child's result line on stdout (read by :func:`parse_result`)."""
    print(RESULT_MARKER + json.dumps(obj), flush=True)


def parse_result(stdout: str) -> dict | None:
    """The last result line written by :func:`emit_result` in ``stdout``, or None."""
    found = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            found = json.loads(line[len(RESULT_MARKER) :])
    return found


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    markdown: bool = False,
    left: int = 1,
) -> str:
    """A text table: the first ``left`` columns left-aligned, the others right-aligned.

    ``markdown=True`` gives a GitHub-flavoured Markdown table (pipes, alignment row).
    """
    n = len(headers)
    for r in rows:
        if len(r) != n:
            raise ValueError(f"table row has {len(r)} cells, expected {n}: {list(r)}")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |" if markdown else "  ".join(parts).rstrip()

    out = [line(headers)]
    if markdown:
        out.append(
            "|"
            + "|".join(
                ("-" * (w + 1) + "-") if i < left else ("-" * (w + 1) + ":")
                for i, w in enumerate(widths)
            )
            + "|"
        )
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch sees no GPU; use --device cpu.")
    return name
