"""The interface every frozen text encoder implements (:mod:`unveil.text.encoders` builds them).

:class:`TextEncoder` turns prompts into an :class:`EncodedText`: token states ``(B, L, E)``,
an attention mask ``(B, L)`` and a pooled sentence vector ``(B, E_pooled)``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from unveil.conditioning import TextCondition


@dataclass
class EncodedText:
    """The frozen encoder's output for a batch of prompts.

    Attributes:
        tokens: token states ``(B, L, E)``, float32; zero where ``mask`` is False.
        mask: ``(B, L)`` bool, True where a token is real (padding is False).
        pooled: sentence vectors ``(B, E_pooled)``, float32 (``E_pooled == E`` except for
            CLIP models whose projection width differs from their hidden width).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.pooled.shape[0]

    def to(self, device: torch.device | str) -> EncodedText:
        return EncodedText(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    def index(self, idx: torch.Tensor | slice | list[int]) -> EncodedText:
        return EncodedText(self.tokens[idx], self.mask[idx], self.pooled[idx])

    def condition(self, null: torch.Tensor | None = None) -> TextCondition:
        """Wrap as a :class:`TextCondition` (``null``: ``(B,)`` bool or None)."""
        return TextCondition(self.tokens, self.mask, self.pooled, null)


class TextEncoder(ABC):
    """A frozen text encoder.

    Attributes:
        name: the name it was built from (``"minilm"``, ``"hf:/models/bert"``...).
        max_length: the most tokens a prompt keeps; longer prompts are truncated with a
            warning.
        device: where the encoder runs; :meth:`encode` returns tensors there.
    """

    name: str
    max_length: int
    device: torch.device

    @property
    @abstractmethod
    def identity(self) -> str:
        """Stable string naming the encoder, a hash of its weights and its max_length."""

    @property
    @abstractmethod
    def width(self) -> int:
        """Token width ``E``."""

    @property
    def pooled_width(self) -> int:
        """Pooled width (equal to :attr:`width` unless the encoder projects the pooled vector)."""
        return self.width

    @abstractmethod
    def encode(self, texts: list[str]) -> EncodedText:
        """Encode ``B`` prompts into tokens ``(B, L, E)``, mask ``(B, L)``, pooled ``(B, E_p)``."""

    def __call__(self, texts: list[str]) -> EncodedText:
        return self.encode(texts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` ``(B, L, E)`` over positions where ``mask`` ``(B, L)`` is True.

    Padding is not counted (the published code divided by the padded length, so a prompt's
    embedding depended on the longest prompt in its batch).  A row with no real token
    gives zeros.  Returns ``(B, E)``.
    """
    weight = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


def warn_truncated(n_long: int, n_total: int, max_length: int, name: str) -> None:
    """Warn that ``n_long`` of ``n_total`` prompts were cut to ``max_length`` tokens."""
    if n_long:
        warnings.warn(
            f"{n_long} of {n_total} prompts are longer than max_length={max_length} tokens for "
            f"text encoder '{name}' and were truncated; raise text.max_length or shorten the "
            "template.",
            stacklevel=3,
        )
