"""EMA of weights: hand-computed averages, warm-up, checkpoint round trip, swapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unveil.generative.ema import EMA, ema_decay


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.norm = nn.BatchNorm1d(1)  # a float buffer (running_mean) and an int counter


def _set(net: Net, w: float) -> None:
    with torch.no_grad():
        net.lin.weight.fill_(w)
        net.lin.bias.fill_(-w)
        net.norm.running_mean.fill_(2 * w)
        net.norm.num_batches_tracked.fill_(int(10 * w))


def test_average_matches_hand_computation_without_warmup():
    net = Net()
    _set(net, 5.0)  # the initial weights must not leak into the average
    ema = EMA(net, decay=0.9, warmup=False)
    for w in (1.0, 2.0, 4.0):
        _set(net, w)
        ema.update(net)
    want = 0.9 * (0.9 * 1.0 + 0.1 * 2.0) + 0.1 * 4.0  # first update copies: 1.0
    assert ema.num_updates == 3
    torch.testing.assert_close(ema.module.lin.weight, torch.full((1, 2), want))
    torch.testing.assert_close(ema.module.lin.bias, torch.full((1,), -want))
    torch.testing.assert_close(ema.module.norm.running_mean, torch.full((1,), 2 * want))
    assert int(ema.module.norm.num_batches_tracked) == 40  # counters are copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_warmup_follows_the_schedule():
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, 10_000) == 0.999
    assert ema_decay(0.5, 0, warmup=False) == 0.5
    net = Net()
    ema = EMA(net, decay=0.99)
    _set(net, 1.0)
    ema.update(net)
    _set(net, 3.0)
    ema.update(net)  # n = 1 earlier update: decay 2/11
    want = 2 / 11 * 1.0 + 9 / 11 * 3.0
    torch.testing.assert_close(ema.module.lin.weight, torch.full((1, 2), want))
    _set(net, 0.0)
    ema.update(net)  # n = 2: decay 3/12
    torch.testing.assert_close(ema.module.lin.weight, torch.full((1, 2), 3 / 12 * want))


def test_state_dict_round_trip_keeps_counter_and_weights():
    net = Net()
    ema = EMA(net, decay=0.9)
    for w in (1.0, 2.0):
        _set(net, w)
        ema.update(net)
    other = EMA(Net(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 2
    torch.testing.assert_close(other.module.lin.weight, ema.module.lin.weight)
    _set(net, 7.0)  # the restored copy continues with the same warm-up step
    ema.update(net)
    other.update(net)
    torch.testing.assert_close(other.module.lin.weight, ema.module.lin.weight)


def test_copy_to_and_average_parameters():
    net = Net()
    ema = EMA(net, decay=0.9, warmup=False)
    _set(net, 1.0)
    ema.update(net)
    _set(net, 3.0)
    ema.update(net)  # 0.9 * 1 + 0.1 * 3 = 1.2
    x = torch.ones(1, 2)
    with ema.average_parameters(net) as swapped:
        assert swapped is net
        torch.testing.assert_close(net.lin.weight, torch.full((1, 2), 1.2))
        torch.testing.assert_close(net.lin(x), torch.full((1, 1), 1.2 + 1.2 - 1.2))
    torch.testing.assert_close(net.lin.weight, torch.full((1, 2), 3.0))  # restored
    target = Net()
    ema.copy_to(target)
    torch.testing.assert_close(target.lin.weight, torch.full((1, 2), 1.2))
    assert target.lin.weight.requires_grad  # only values were copied


def test_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(Net(), decay=1.0)
