"""The adherence reader of :mod:`unveil.metrics.adherence`: a small 3D CNN and its training.

:func:`fit_attribute_model` trains one reader of one attribute on real volumes (a
classifier with inverse-frequency class weights, or a regressor on the standardised
target); :class:`AttributeModel` applies it.  Training runs on one CPU thread and draws
every random number from its own ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

Kind = Literal["classifier", "regressor"]


def _net(out: int, width: int) -> torch.nn.Module:
    """A fresh reader network with ``out`` outputs and ``width`` first-layer channels."""
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    from torch import nn

    class AttributeNet(nn.Module):
        """``(B, 2, S, S, S) -> (B, out)``: three stride-2 convolutions, global mean, linear."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv3d(2, width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv3d(width, 2 * width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv3d(2 * width, 4 * width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool3d(1),
                nn.Flatten(),
            )
            self.head = nn.Linear(4 * width, out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    return AttributeNet()


def _init(net: torch.nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default layer init, but drawn from ``gen`` instead of the global RNG."""
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch
    from torch import nn

    for mod in net.modules():
        if isinstance(mod, (nn.Conv3d, nn.Linear)):
            nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5), generator=gen)
            fan_in = mod.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                nn.init.uniform_(mod.bias, -bound, bound, generator=gen)


@dataclass
class AttributeModel:
    """A trained reader of one attribute.

    Attributes:
        field: the template field it reads.
        kind: ``"classifier"`` or ``"regressor"``.
        classes: the raw codes of the classes (classifier), in output order.
        net: the network, ``(B, 2, S, S, S) -> (B, K)`` (``K = 1`` for a regressor).
        in_mean, in_std: per-channel normalisation of the input, from the training set.
        y_mean, y_std: standardisation of the regression target.
        n_train: training subjects.
        unit: the attribute's unit for MAE (regressor), e.g. ``"years"``.
    """

    field: str
    kind: Kind
    net: Any
    in_mean: np.ndarray
    in_std: np.ndarray
    classes: list[Any] = field(default_factory=list)
    y_mean: float = 0.0
    y_std: float = 1.0
    n_train: int = 0
    unit: str = ""

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """``(N, 2, S, S, S)`` -> class probabilities ``(N, K)`` or values ``(N,)`` in the
        attribute's unit."""
        # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
        import torch

        x = _normalise(np.asarray(inputs, dtype=np.float32), self.in_mean, self.in_std)
        self.net.eval()
        with _one_thread(), torch.no_grad():
            out = self.net(torch.from_numpy(x)).double()
        if self.kind == "classifier":
            return torch.softmax(out, dim=1).numpy()
        return out[:, 0].numpy() * self.y_std + self.y_mean


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread for the duration (restored afterwards).

    The reader is tiny (a few thousand weights on ``32^3`` inputs): intra-op threading only
    adds synchronisation, and on a machine whose cores are busy it made one training step
    10-50x slower (measured: 5 ms on one thread against 70-270 ms on two).
    """
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(N, 2, S, S, S)`` inputs standardised per channel, float32."""
    if x.ndim != 5 or x.shape[1] != 2:
        raise ValueError(f"inputs must be (N, 2, S, S, S), got {x.shape}")
    return ((x - mean[None, :, None, None, None]) / std[None, :, None, None, None]).astype(
        np.float32
    )


def fit_attribute_model(
    field_name: str,
    inputs: np.ndarray,
    targets: Sequence[Any],
    kind: Kind,
    *,
    classes: Sequence[Any] | None = None,
    seed: int = 0,
    epochs: int = 150,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 32,
    width: int = 8,
    unit: str = "",
) -> AttributeModel:
    """Train one reader on real volumes.

    Args:
        field_name: the attribute's template field.
        inputs: ``(N, 2, S, S, S)`` from :func:`adherence_input`.
        targets: ``N`` raw class codes (classifier) or numbers (regressor); no ``None``.
        kind: ``"classifier"`` or ``"regressor"``.
        classes: the class codes in output order (default: first-seen order of
            ``targets``); every target must be one of them.
        seed: seeds the initialisation and the batch order (a ``torch.Generator``; the
            global RNG is not touched).
        epochs: passes over the training set.
        lr, weight_decay: AdamW settings (weight decay regularises the tiny set).
        batch_size: subjects per step.
        width: channels of the first convolution.
        unit: the attribute's unit, kept for reports.

    Classes are weighted by inverse frequency so a rare class is not ignored; a regression
    target is standardised and fitted with the squared error.
    """
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch

    x = np.asarray(inputs, dtype=np.float32)
    n = x.shape[0] if x.ndim == 5 else 0
    if n != len(targets) or n < 2:
        raise ValueError(
            f"need (N, 2, S, S, S) inputs with N >= 2 targets, got {x.shape}, {len(targets)}"
        )
    in_mean = x.mean(axis=(0, 2, 3, 4)).astype(np.float64)
    in_std = x.std(axis=(0, 2, 3, 4)).astype(np.float64)
    in_std = np.where(in_std > 1e-8, in_std, 1.0)
    xt = torch.from_numpy(_normalise(x, in_mean, in_std))

    gen = torch.Generator().manual_seed(int(seed))
    if kind == "classifier":
        cls, yt, weights = _class_targets(targets, classes)
        net = _net(len(cls), width)
        y_mean, y_std = 0.0, 1.0
    elif kind == "regressor":
        cls, weights = [], None
        yt, y_mean, y_std = _regression_targets(targets)
        net = _net(1, width)
    else:
        raise ValueError(f"kind must be 'classifier' or 'regressor', got {kind!r}")
    _init(net, gen)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    with _one_thread():
        _fit_loop(net, opt, xt, yt, kind, weights, epochs, batch_size, gen)
    net.eval()
    return AttributeModel(
        field=field_name,
        kind=kind,
        net=net,
        in_mean=in_mean,
        in_std=in_std,
        classes=cls,
        y_mean=y_mean,
        y_std=y_std,
        n_train=n,
        unit=unit,
    )


def _class_targets(
    targets: Sequence[Any], classes: Sequence[Any] | None
) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
    """``(classes, class indices, inverse-frequency class weights)`` of a classifier's targets.

    ``classes`` defaults to the first-seen order of ``targets``; a class absent from the
    targets gets weight 0.
    """
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch

    cls = list(classes) if classes is not None else list(dict.fromkeys(targets))
    index = {c: i for i, c in enumerate(cls)}
    unknown = [t for t in targets if t not in index]
    if unknown:
        raise ValueError(f"targets {unknown[:3]} are not among the classes {cls}")
    yt = torch.tensor([index[t] for t in targets], dtype=torch.long)
    counts = torch.bincount(yt, minlength=len(cls)).double()
    weights = torch.where(counts > 0, counts.sum() / (len(cls) * counts.clamp_min(1)), 0.0)
    return cls, yt, weights


def _regression_targets(targets: Sequence[Any]) -> tuple[torch.Tensor, float, float]:
    """``(standardised float32 targets, mean, std)``; a constant target keeps std 1."""
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch

    y = np.asarray(targets, dtype=np.float64)
    y_mean, y_std = float(y.mean()), float(y.std())
    y_std = y_std if y_std > 1e-12 else 1.0
    return torch.from_numpy((y - y_mean) / y_std).float(), y_mean, y_std


def _fit_loop(net, opt, xt, yt, kind, weights, epochs, batch_size, gen) -> None:
    """Mini-batch AdamW over ``epochs`` passes, batch order drawn from ``gen``."""
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch
    import torch.nn.functional as F

    n = xt.shape[0]
    for _ in range(int(epochs)):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            out = net(xt[idx])
            if kind == "classifier":
                loss = F.cross_entropy(out, yt[idx], weight=weights.float())
            else:
                loss = F.mse_loss(out[:, 0], yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
