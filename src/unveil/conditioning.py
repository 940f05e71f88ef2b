"""The text condition as it travels from the text encoder into the networks."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextCondition:
    """Encoded clinical text for a batch.

    Attributes:
        tokens: token states ``(B, L, E)``.
        mask: attention mask ``(B, L)``, bool, True where a token is real.
        pooled: pooled sentence vector ``(B, E)``.
        null: ``(B,)`` bool, True where the whole prompt is dropped (classifier-free
            guidance); networks then use their learned null condition.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    null: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextCondition:
        return TextCondition(
            tokens=self.tokens.to(device=device, dtype=dtype or self.tokens.dtype),
            mask=self.mask.to(device),
            pooled=self.pooled.to(device=device, dtype=dtype or self.pooled.dtype),
            null=None if self.null is None else self.null.to(device),
        )

    @property
    def batch_size(self) -> int:
        return self.pooled.shape[0]

    def index(self, idx: torch.Tensor | slice | list[int]) -> TextCondition:
        return TextCondition(
            self.tokens[idx],
            self.mask[idx],
            self.pooled[idx],
            None if self.null is None else self.null[idx],
        )

    @staticmethod
    def cat(conds: list[TextCondition]) -> TextCondition:
        nulls = [
            c.null
            if c.null is not None
            else torch.zeros(c.batch_size, dtype=torch.bool, device=c.pooled.device)
            for c in conds
        ]
        return TextCondition(
            torch.cat([c.tokens for c in conds]),
            torch.cat([c.mask for c in conds]),
            torch.cat([c.pooled for c in conds]),
            torch.cat(nulls),
        )
