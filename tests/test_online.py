"""lsmooth.online against hand-computed epochs, PyTorch's cross-entropy and the public port's semantics.

The public port is ankandrew/online-label-smoothing-pt (read for behaviour; its test_update example
is reproduced below with our own numbers, transposed: it keeps one column per class, we one row).
Tolerances: torch.testing's defaults for the dtype compared (float64 rtol 1e-7, float32 1.3e-6).
"""

import contextlib
import math
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from fastai.layers import NoneReduce
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from lsmooth import online
from lsmooth.online import OnlineLabelSmoothingCrossEntropy as OLS

LN2 = math.log(2)


def logits(*probs):
    """Logits whose softmax is ``probs`` (rows summing to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def value_and_grad(fn, x, *args):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *args)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def test_two_epochs_by_hand():
    ols = OLS(3, alpha=0.5, reduction="none").double()  # float64 buffers: exact hand values
    assert_close(ols.targets, torch.full((3, 3), 1 / 3, dtype=torch.float64))  # first_eps = 1: uniform in epoch 1
    # epoch 1: rows 0, 1 (class 0) and 3 (class 1) are classified correctly; row 2 (class 1, argmax 0)
    # and row 4 (class 2, argmax 1) are not, so they count nowhere
    x = logits([0.5, 0.25, 0.25], [0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3])
    y = torch.tensor([0, 0, 1, 1, 2])
    # epoch-1 loss of row 0: 0.5·ln 2 + 0.5·(1/3)·(ln 2 + 2·ln 4) = 0.5·ln 2 + (5/6)·ln 2
    assert_close(ols(x, y)[0].item(), (0.5 + 5 / 6) * LN2)
    ols.update(x, y)
    assert_close(ols.counts, torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    assert_close(ols.sums[0], torch.tensor([1.2, 0.45, 0.35], dtype=torch.float64))
    ols.next_epoch()
    expected = torch.tensor([[0.6, 0.225, 0.175], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    assert_close(ols.targets, expected)  # class 2 had no correct sample: it keeps its targets
    assert not ols.sums.any() and not ols.counts.any()
    # epoch 2, p = [1/2, 1/4, 1/4] with y = 0: 0.5·ln 2 + 0.5·(0.6·ln 2 + 0.4·ln 4) = 1.2·ln 2;
    # p = [1/4, 1/2, 1/4], y = 1: 0.5·ln 2 + 0.5·(0.2·ln 4 + 0.8·ln 2) = 1.1·ln 2;
    # p = [1/4, 1/4, 1/2], y = 2 (uniform): 0.5·ln 2 + 0.5·(5/3)·ln 2 = (4/3)·ln 2
    x2 = logits([0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5])
    y2 = torch.tensor([0, 1, 2])
    rows = torch.tensor([1.2, 1.1, 4 / 3], dtype=torch.float64) * LN2
    assert_close(ols(x2, y2), rows)
    ols.reduction = "mean"
    assert_close(ols(x2, y2), rows.mean())
    # epoch 2 counts only its own samples; class 0 misclassified now keeps its epoch-2 targets
    ols.update(x2[1:], y2[1:])
    ols.next_epoch()
    assert_close(ols.targets[0], expected[0])
    assert_close(ols.targets[1:], torch.tensor([[0.25, 0.5, 0.25], [0.25, 0.25, 0.5]], dtype=torch.float64))


def test_update_reproduces_the_public_ports_example_transposed():
    """ankandrew/online-label-smoothing-pt test/test_update.py: y = [1, 0, 0, 1], softmax rows below,
    rows 0, 1, 3 correct. Its matrix has class 0's column [0.7, 0.2, 0.1], class 1's [0.25, 0.65, 0.1]
    and class 2's zeros (no correct sample); ours has them as rows, and class 2 keeps its targets."""
    ols = OLS(3, first_eps=0.0)  # hard labels first: a kept row is visible as one-hot
    p = [[0.3, 0.6, 0.1], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1]]
    ols.update(logits(*p).float(), torch.tensor([1, 0, 0, 1]))
    assert_close(ols.counts, torch.tensor([1.0, 2.0, 0.0]))
    ols.next_epoch()
    assert_close(ols.targets, torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.65, 0.1], [0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_first_epoch_loss_matches_the_public_ports_initialisation(alpha):
    """The port starts from smoothing s spread over the other classes (true class 1 - s, others
    s/(K-1)) and computes a·CE + (1-a)·mean(-Σ q·log p); first_eps = s·K/(K-1) is the same start."""
    k, s = 4, 0.1
    q = torch.full((k, k), s / (k - 1), dtype=torch.float64).fill_diagonal_(1 - s)
    ols = OLS(k, alpha, first_eps=s * k / (k - 1)).double()
    assert_close(ols.targets, q)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, k, generator=g, dtype=torch.float64) * 2, torch.randint(0, k, (9,), generator=g)
    assert_close(ols(x, y), alpha * F.cross_entropy(x, y) + (1 - alpha) * F.cross_entropy(x, q[y]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_value_and_gradient_match_torch(reduction, dtype):
    """Against α·F.cross_entropy(x, y) + (1-α)·F.cross_entropy(x, T[y]) with arbitrary targets T."""
    g = torch.Generator().manual_seed(1)
    k, alpha = 7, 0.3
    ols = OLS(k, alpha, reduction=reduction).to(dtype)
    ols.targets.copy_(torch.softmax(torch.randn(k, k, generator=g), 1))
    x, y = torch.randn(20, k, generator=g, dtype=dtype) * 3, torch.randint(0, k, (20,), generator=g)

    def reference(x, y):
        kw = dict(reduction=reduction)
        return alpha * F.cross_entropy(x, y, **kw) + (1 - alpha) * F.cross_entropy(x, ols.targets[y], **kw)

    assert_close(value_and_grad(ols, x, y), value_and_grad(reference, x, y))


def test_half_precision_and_empty_batch():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 300, generator=g) * 4, torch.randint(0, 300, (16,), generator=g)
    ols = OLS(300)
    loss, grad = value_and_grad(ols, x.bfloat16(), y)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert_close(loss, ols(x.bfloat16().float(), y))
    empty, grad = value_and_grad(ols, x[:0], y[:0])
    assert empty.item() == 0 and grad.shape == (0, 300)


class NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            raise AssertionError(f"host read: {func}")
        return func(*args, **(kwargs or {}))


def test_no_host_reads_and_meta_tensors():
    """Forward, backward, update and next_epoch read no value: they run on meta tensors, and on the
    CPU under a mode that fails on every read (which does fail on one, below)."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(12, 5, generator=g), torch.randint(0, 5, (12,), generator=g)
    for device in ("cpu", "meta"):
        ols = OLS(5).to(device)
        xd = x.to(device, copy=True).requires_grad_()
        with NoHostReads() if device == "cpu" else contextlib.nullcontext():  # meta tensors hold no values to read
            ols(xd, y.to(device)).backward()
            ols.update(xd, y.to(device))
            ols.next_epoch()
        assert xd.grad.shape == x.shape and ols.targets.shape == (5, 5) and ols.targets.device.type == device
    with pytest.raises(AssertionError, match="host read"), NoHostReads():
        ols.counts.sum().item()


def test_compiles_whole():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(12, 5, generator=g), torch.randint(0, 5, (12,), generator=g)
    ols = OLS(5)
    ols.targets.copy_(torch.softmax(torch.randn(5, 5, generator=g), 1))
    eager = OLS(5)
    eager.load_state_dict(ols.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(ols, fullgraph=True, backend="aot_eager")
    assert_close(value_and_grad(compiled, x, y), value_and_grad(eager, x, y))
    torch.compile(ols.update, fullgraph=True, backend="aot_eager")(x, y)
    torch.compile(ols.next_epoch, fullgraph=True, backend="aot_eager")()
    eager.update(x, y)
    eager.next_epoch()
    assert_close(ols.targets, eager.targets)


def test_state_dict_round_trip_resumes_exactly():
    """An interrupted run restored from state_dict (a fresh module, other settings) continues
    exactly as the uninterrupted one: the three buffers are the whole state."""
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(10, 4, generator=g) * 3, torch.randint(0, 4, (10,), generator=g)) for _ in range(4)]
    run = OLS(4, 0.4)
    for x, y in batches[:2]:
        run.update(x, y)
    run.next_epoch()
    run.update(*batches[2])  # mid-epoch
    state = pickle.loads(pickle.dumps(run.state_dict()))
    assert set(state) == {"targets", "sums", "counts"}
    resumed = OLS(4, 0.4, first_eps=0.0)
    resumed.load_state_dict(state)
    for ols in (run, resumed):
        ols.update(*batches[3])
        ols.next_epoch()
    for key in state:
        assert torch.equal(getattr(resumed, key), getattr(run, key)), key
    assert torch.equal(resumed(*batches[0]), run(*batches[0]))


def test_fastai_attributes_pickle_and_none_reduce():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    ols = OLS(3, 0.7, first_eps=0.3, reduction="sum")
    ols.update(x, y)
    assert ols.y_int is True
    assert_close(ols.activation(x), torch.softmax(x, 1))
    assert torch.equal(ols.decodes(x), x.argmax(1))
    clone = pickle.loads(pickle.dumps(ols))
    assert (clone.num_classes, clone.alpha, clone.first_eps, clone.reduction) == (3, 0.7, 0.3, "sum")
    assert torch.equal(clone.sums, ols.sums) and torch.equal(clone(x, y), ols(x, y))
    total = ols(x, y)
    with NoneReduce(ols) as none_ols:
        per_item = none_ols(x, y)
    assert per_item.shape == (6,) and ols.reduction == "sum"
    assert_close(per_item.sum(), total)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=1), r"num_classes=1 is not allowed; need an int >= 2"),
        (dict(num_classes=2.5), r"num_classes=2.5 is not allowed"),
        (dict(num_classes=True), r"num_classes=True is not allowed"),
        (dict(num_classes=3, alpha=1.5), r"alpha=1.5 is not allowed; alpha must be in \[0, 1\]"),
        (dict(num_classes=3, alpha=math.nan), r"alpha=nan is not allowed"),
        (dict(num_classes=3, alpha="half"), r"alpha='half' must be a real number"),
        (dict(num_classes=3, first_eps=-0.1), r"first_eps=-0.1 is not allowed; first_eps must be in \[0, 1\]"),
        (dict(num_classes=3, reduction="avg"), r"reduction='avg' is not supported; use one of 'mean', 'sum', 'none'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OLS(**kwargs)


def test_bad_inputs():
    ols = OLS(3)
    with pytest.raises(ValueError, match=r"logits have shape \(4, 5\); expected \(N, 3\)"):
        ols(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target has shape \(4,\) and dtype torch.float32; expected class indices"):
        ols(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"target has shape \(5,\)"):
        ols(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    ols.reduction = "batchmean"
    with pytest.raises(ValueError, match=r"reduction='batchmean'"):
        ols(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_online_py_works_copied_alone(tmp_path):
    """online.py imports only torch: copied into an empty folder it runs without lsmooth or fastai."""
    shutil.copy(online.__file__, tmp_path / "online.py")
    code = (
        "import sys, torch, online\n"
        "assert not {m.split('.')[0] for m in sys.modules} & {'lsmooth', 'fastai', 'timm'}\n"
        "ols = online.OnlineLabelSmoothingCrossEntropy(4)\n"
        "x, y = torch.randn(8, 4, requires_grad=True), torch.randint(0, 4, (8,))\n"
        "ols(x, y).backward(); ols.update(x, y); ols.next_epoch()\n"
        "print('ok')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
