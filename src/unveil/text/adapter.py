"""The trainable bridge from a frozen text encoder to the networks' conditioning width.

The encoder is frozen and cached, so this small module is where the clinical text is
adapted to the image model; it is saved with the model's state dict.  It also owns the
learned *null* condition (imagen-style): a short token sequence and a pooled vector used
for prompts dropped for classifier-free guidance and for rows with no text at all, so
cross-attention always has at least one real key.
"""

from __future__ import annotations

import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.text.encoders import EncodedText, TextEncoder


class TextAdapter(nn.Module):
    """Map encoder outputs of width ``E`` to ``cond_dim`` and substitute the null condition.

    Tokens go through ``LayerNorm(E) -> Linear(E, cond_dim)``; the pooled vector through
    ``LayerNorm(E_p) -> Linear(E_p, hidden) -> SiLU -> Linear(hidden, cond_dim)``.  The
    LayerNorms put encoders of very different scales (a 64-d bag of words, a 768-d BERT)
    on the same footing.

    Args:
        in_dim: encoder token width ``E``.
        cond_dim: output width ``C`` (``config.text.cond_dim``).
        pooled_in_dim: encoder pooled width ``E_p`` (default ``in_dim``; differs for CLIP).
        null_length: number of learned null tokens ``N0``.
        hidden_dim: hidden width of the pooled MLP (default ``max(cond_dim, E_p)``).

    Shapes (``forward``):
        input tokens ``(B, L, E)``, mask ``(B, L)`` bool, pooled ``(B, E_p)``, null ``(B,)``;
        output tokens ``(B, max(L, N0), C)`` (zero where the mask is False), mask
        ``(B, max(L, N0))``, pooled ``(B, C)``, null ``(B,)`` bool.
    """

    def __init__(
        self,
        in_dim: int,
        cond_dim: int,
        pooled_in_dim: int | None = None,
        null_length: int = 1,
        hidden_dim: int | None = None,
    ):
        super().__init__()
        if null_length < 1:
            raise ValueError(f"null_length must be at least 1, got {null_length}.")
        pooled_in_dim = in_dim if pooled_in_dim is None else pooled_in_dim
        hidden_dim = max(cond_dim, pooled_in_dim) if hidden_dim is None else hidden_dim
        self.in_dim = in_dim
        self.pooled_in_dim = pooled_in_dim
        self.cond_dim = cond_dim
        self.null_length = null_length
        self.token_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, cond_dim))
        self.pooled_proj = nn.Sequential(
            nn.LayerNorm(pooled_in_dim),
            nn.Linear(pooled_in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, cond_dim),
        )
        # Small values: comparable to projected text at init, not zero (a zero null
        # pooled vector would make the unconditional branch degenerate for scale/shift).
        self.null_tokens = nn.Parameter(torch.randn(null_length, cond_dim) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(cond_dim) * 0.02)
        # Per-dimension standardisation of the frozen embeddings over the training prompts
        # (see fit_normalization).  Template sentences are near-duplicates to a
        # general-purpose encoder (cosine ~0.9 between prompts that differ in a field), so
        # without it the part that carries the clinical values is a small ripple on a large
        # shared vector and the networks take very long to pick it up.  Identity until fit.
        self.register_buffer("token_mean", torch.zeros(in_dim))
        self.register_buffer("token_scale", torch.ones(in_dim))
        self.register_buffer("pooled_mean", torch.zeros(pooled_in_dim))
        self.register_buffer("pooled_scale", torch.ones(pooled_in_dim))

    @torch.no_grad()
    def fit_normalization(self, text: EncodedText | TextCondition) -> None:
        """Set the standardisation from the embeddings of the training prompts.

        ``text`` holds each unique training prompt once: tokens ``(N, L, E)`` with mask
        ``(N, L)`` and pooled ``(N, E_p)``.  Means and standard deviations are taken over
        prompts (pooled) and over real tokens (tokens); a dimension that barely varies is
        scaled by a floor (1% of the mean deviation) instead of being blown up.  The
        statistics are buffers, saved with the model, so inference uses exactly them.
        """

        def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = x.float()
            mean = x.mean(dim=0)
            std = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(mean)
            return mean, std.clamp_min(1e-2 * float(std.mean()) + 1e-8)

        tokens = text.tokens[text.mask.bool()]
        if tokens.shape[0] > 0:
            m, sd = stats(tokens)
            self.token_mean.copy_(m)
            self.token_scale.copy_(sd)
        if text.pooled.shape[0] > 0:
            m, sd = stats(text.pooled)
            self.pooled_mean.copy_(m)
            self.pooled_scale.copy_(sd)

    @classmethod
    def for_encoder(cls, encoder: TextEncoder, cond_dim: int, **kwargs: int) -> TextAdapter:
        """An adapter sized for ``encoder``'s token and pooled widths."""
        return cls(encoder.width, cond_dim, pooled_in_dim=encoder.pooled_width, **kwargs)

    def forward(
        self, text: TextCondition | EncodedText, null: torch.Tensor | None = None
    ) -> TextCondition:
        """Project ``text`` and put the learned null condition where the prompt is dropped.

        ``null`` ``(B,)`` bool overrides ``text.null``; rows whose mask is all False are
        treated as null too.  The returned ``null`` marks every row that received the null
        condition; its tokens and pooled vector are already substituted, so networks need
        not substitute again.
        """
        tokens, mask, pooled = text.tokens, text.mask.bool(), text.pooled
        batch, length, _ = tokens.shape
        if null is None:
            null = getattr(text, "null", None)
        if null is None:
            null = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
        null = null.to(device=tokens.device, dtype=torch.bool) | ~mask.any(dim=1)

        out_tokens = self.token_proj((tokens - self.token_mean) / self.token_scale)
        out_pooled = self.pooled_proj((pooled - self.pooled_mean) / self.pooled_scale)
        out_length = max(length, self.null_length)
        if out_length > length:
            out_tokens = nn.functional.pad(out_tokens, (0, 0, 0, out_length - length))
            mask = nn.functional.pad(mask, (0, out_length - length))

        positions = torch.arange(out_length, device=tokens.device)
        null_mask = (positions < self.null_length).expand(batch, out_length)
        null_tokens = nn.functional.pad(
            self.null_tokens, (0, 0, 0, out_length - self.null_length)
        ).to(out_tokens.dtype)
        rows = null.view(batch, 1)
        mask = torch.where(rows, null_mask, mask)
        out_tokens = torch.where(rows.unsqueeze(-1), null_tokens.expand_as(out_tokens), out_tokens)
        out_tokens = out_tokens * mask.unsqueeze(-1).to(out_tokens.dtype)
        out_pooled = torch.where(rows, self.null_pooled.to(out_pooled.dtype), out_pooled)
        return TextCondition(out_tokens, mask, out_pooled, null)
