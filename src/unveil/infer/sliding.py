"""Whole-volume generation by Gaussian-blended sliding windows (MONAI).

The network works on patches; a scan is larger.  MONAI's ``sliding_window_inference``
tiles the volume, runs a predictor on each window and blends overlapping windows with
Gaussian weights, so there are no seams.  For diffusion the *sampler* runs on the whole
volume: one noise volume for the whole scan, and at every denoising step all windows of
the current ``x_t`` are evaluated and blended into one prediction.  (The published code
sampled each window independently with fresh noise and averaged uniformly, which gives
seams and makes counterfactual pairs share nothing.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference

from unveil.conditioning import TextCondition

Net = Callable[..., torch.Tensor]


def _expand_cond(cond: TextCondition | None, n: int) -> TextCondition | None:
    """Repeat a batch-1 condition for ``n`` windows (batched windows of one scan)."""
    if cond is None or cond.batch_size == n:
        return cond
    if cond.batch_size != 1:
        raise ValueError(f"sliding windows need a batch-1 condition, got batch {cond.batch_size}")
    null = None if cond.null is None else cond.null.expand(n)
    return TextCondition(
        cond.tokens.expand(n, -1, -1), cond.mask.expand(n, -1), cond.pooled.expand(n, -1), null
    )


def windowed(
    net: Net,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    progress: bool = False,
) -> Callable[
    [torch.Tensor | None, torch.Tensor, torch.Tensor | None, TextCondition | None], torch.Tensor
]:
    """Wrap ``net(x, mask, t, cond)`` so that it runs window by window on a whole scan.

    The returned callable takes ``x`` ``(1, Cx, X, Y, Z)`` or None, ``mask``
    ``(1, M, X, Y, Z)``, ``t`` ``(1,)`` or None and a batch-1 ``cond`` and returns
    ``(1, C_out, X, Y, Z)``.  Inputs are concatenated so MONAI cuts every window of ``x``
    and ``mask`` at the same place; volumes smaller than ``roi_size`` are padded by MONAI
    and cropped back.
    """
    roi = tuple(int(r) for r in roi_size)

    def run(
        x: torch.Tensor | None,
        mask: torch.Tensor,
        t: torch.Tensor | None,
        cond: TextCondition | None,
    ) -> torch.Tensor:
        if mask.shape[0] != 1:
            raise ValueError("whole-volume inference runs one scan at a time (batch 1)")
        cx = 0 if x is None else x.shape[1]
        stacked = mask if x is None else torch.cat([x, mask], dim=1)

        def predictor(window: torch.Tensor) -> torch.Tensor:
            n = window.shape[0]
            xw = None if cx == 0 else window[:, :cx]
            tw = None if t is None else t.expand(n)
            return net(xw, window[:, cx:], tw, _expand_cond(cond, n))

        return sliding_window_inference(
            stacked,
            roi_size=roi,
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=overlap,
            mode=mode,
            padding_mode="replicate",
            progress=progress,
        )

    return run
