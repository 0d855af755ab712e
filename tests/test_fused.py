"""lsmooth/fused.py: the one-softmax CPU path keeps one N×K buffer and exponentiates once.

Its values and gradients are compared with PyTorch and the reference twin in tests/test_losses.py,
where every comparison also runs with the fused path forced on small inputs (the "fused" path).
"""

import math

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lsmooth import fused, label_smoothing_cross_entropy


def test_the_shapes_below_take_the_fused_path():
    assert 300 * 1000 >= fused.MIN_LOGITS
    x = torch.randn(300, 1000, requires_grad=True)
    t = torch.randint(0, 1000, (300,))
    assert fused.fused_smoothed_nll(x, t, 0.9, 0.1 / 1000, "mean") is not None
    x = x.detach()[:, :10].requires_grad_()  # below the threshold: not worth it
    assert fused.fused_smoothed_nll(x, t % 10, 0.9, 0.01, "mean") is None


def test_min_logits_set_to_inf_turns_the_path_off(monkeypatch):
    """The switch benchmarks/loss_impls.py uses for its ablation row; the loss is unchanged."""
    x = torch.randn(300, 1000, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 1000, (300,))
    monkeypatch.setattr(fused, "MIN_LOGITS", math.inf)
    assert fused.fused_smoothed_nll(x, t, 0.9, 0.1 / 1000, "mean") is None
    torch.testing.assert_close(label_smoothing_cross_entropy(x, t, 0.1), F.cross_entropy(x, t, label_smoothing=0.1))


class LargeOutputs(TorchDispatchMode):
    """Records the distinct storages of op outputs with at least ``numel`` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.storages = numel, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, tuple) else (out,):
            if isinstance(o, torch.Tensor) and o.numel() >= self.numel:
                self.storages.add(o.untyped_storage().data_ptr())
        return out


def test_fused_path_allocates_one_n_by_k_buffer_that_becomes_the_gradient():
    x = torch.randn(300, 1000, requires_grad=True)  # above fused.MIN_LOGITS
    t = torch.randint(0, 1000, (300,))
    with LargeOutputs(x.numel()) as ours:
        label_smoothing_cross_entropy(x, t, 0.1).backward()
    assert ours.storages == {x.grad.untyped_storage().data_ptr()}
    x.grad = None
    with LargeOutputs(x.numel()) as torchs:  # the check can fail: torch keeps log-probs and allocates the gradient
        F.cross_entropy(x, t, label_smoothing=0.1).backward()
    assert len(torchs.storages) >= 2


def test_one_exponentiating_pass_for_forward_and_backward():
    exp_ops = {"softmax", "_softmax", "log_softmax", "_log_softmax", "_log_softmax_backward_data",
               "_softmax_backward_data", "exp", "exp_", "logsumexp"}  # fmt: skip

    class CountExpPasses(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in exp_ops:
                self.calls.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.randn(300, 1000, requires_grad=True)  # above fused.MIN_LOGITS: the fused path
    t = torch.randint(0, 1000, (300,))
    with CountExpPasses() as ours:
        label_smoothing_cross_entropy(x, t, 0.1).backward()
    with CountExpPasses() as torchs:  # the check can fail: torch's log_softmax + its backward
        F.cross_entropy(x, t, label_smoothing=0.1).backward()
    assert len(ours.calls) == 1, ours.calls
    assert torchs.calls == ["_log_softmax", "_log_softmax_backward_data"]
