"""Inference precisions, in a module light enough for the command line to import."""

from __future__ import annotations

#: ``none``: float32.  ``bf16``: the network under bfloat16 autocast; the sampler's
#: arithmetic, the window blending and the output stay float32.
AMP_CHOICES: tuple[str, ...] = ("none", "bf16")
