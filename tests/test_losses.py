"""lsmooth.losses against PyTorch, fastai, timm, the reference twin and hand-computed values.

Tolerances: float64 comparisons use torch.testing's float64 defaults (rtol 1e-7, atol 1e-7)
unless stated; float32 ones its float32 defaults (rtol 1.3e-6, atol 1e-5).
"""

import contextlib
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from fastai.losses import LabelSmoothingCrossEntropy as FastaiLS
from fastai.losses import LabelSmoothingCrossEntropyFlat as FastaiLSFlat
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.loss import LabelSmoothingCrossEntropy as TimmLS
from torch.testing import assert_close

from lsmooth import (
    LabelSmoothingBCEWithLogits,
    LabelSmoothingCrossEntropy,
    LabelSmoothingCrossEntropyFlat,
    linear_combination,
    losses,
    reduce_loss,
    smooth_targets,
)
from lsmooth.losses import (
    label_smoothing_cross_entropy,
    label_smoothing_cross_entropy_reference,
)

INF = math.inf

# The loss has three code paths: native ops for small unweighted inputs, and a custom
# autograd.Function over one block of rows or over many. Tests that take `path` run on each.
PATHS = {
    "native": {},
    "function": {"_SMALL": 0},
    "blocks": {"_SMALL": 0, "_BLOCK": 50},
}


@contextlib.contextmanager
def code_path(name):
    saved = {key: getattr(losses, key) for key in PATHS[name]}
    for key, value in PATHS[name].items():
        setattr(losses, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(losses, key, value)


@pytest.fixture(params=list(PATHS))
def path(request):
    with code_path(request.param):
        yield request.param


def value_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def make(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype) * 3
    k = shape[1]
    t = torch.randint(0, k, shape[:1] + shape[2:], generator=g)
    return x, t, g


# --- against torch.nn.functional.cross_entropy -------------------------------------------------

SHAPES = [(7, 5), (4, 6, 3), (2, 4, 3, 2), (1, 2), (130, 600)]  # last: several row blocks


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weighted"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.6, 1.0])
def test_index_targets_match_torch(shape, reduction, weighted, ignore, eps, path):
    x, t, g = make(shape)
    w = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.1 if weighted else None
    if ignore:
        t.view(-1)[::3] = 255
    kw = dict(weight=w, reduction=reduction, ignore_index=255 if ignore else -100)
    ours = value_and_grad(label_smoothing_cross_entropy, x, t, eps, **kw)
    theirs = value_and_grad(F.cross_entropy, x, t, label_smoothing=eps, **kw)
    if ignore and reduction == "mean" and t.numel() == 1:  # all ignored: NaN in torch, 0 here
        assert theirs[0].isnan() and ours[0] == 0 and not ours[1].any()
        return
    assert_close(ours, theirs)


@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weighted"])
@pytest.mark.parametrize("eps", [0.0, 0.25, 1.0])
def test_soft_targets_match_torch(shape, reduction, weighted, eps):
    x, _, g = make(shape)
    q = torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64), 1)
    w = torch.rand(shape[1], generator=g, dtype=torch.float64) if weighted else None
    ours = value_and_grad(label_smoothing_cross_entropy, x, q, eps, w, reduction)
    theirs = value_and_grad(F.cross_entropy, x, q, w, reduction=reduction, label_smoothing=eps)
    assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_target_dtype(dtype):
    x, t, _ = make((9, 4))
    assert_close(
        label_smoothing_cross_entropy(x, t.to(dtype), 0.1),
        F.cross_entropy(x, t, label_smoothing=0.1),
    )


def test_float32_matches_torch_at_float32_tolerance(path):
    x, t, _ = make((300, 1000), dtype=torch.float32)
    assert_close(
        value_and_grad(label_smoothing_cross_entropy, x, t, 0.1),
        value_and_grad(F.cross_entropy, x, t, label_smoothing=0.1),
    )


# --- the reference twin and hypothesis ----------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    k=st.integers(2, 40),
    extra=st.lists(st.integers(1, 3), max_size=2),
    eps=st.floats(-3.0, 1.0),
    spread=st.sampled_from(["uniform", "others"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_path_matches_reference_twin(n, k, extra, eps, spread, reduction, weighted, seed):
    x, t, g = make((n, k, *extra), seed=seed)
    if seed % 2:
        t.view(-1)[0] = -100
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.05 if weighted else None
    kw = dict(weight=w, reduction=reduction, spread=spread)
    ref = value_and_grad(label_smoothing_cross_entropy_reference, x, t, eps, **kw)
    for name in PATHS:
        with code_path(name):
            fast = value_and_grad(label_smoothing_cross_entropy, x, t, eps, **kw)
        if reduction == "mean" and t.numel() == 1 and seed % 2:  # the only row is ignored: 0 here, NaN in the reference
            assert fast[0] == 0 and not fast[1].any()
        else:
            assert_close(fast, ref, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"{name} path: {m}")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 10), k=st.integers(2, 30), eps=st.floats(0.0, 1.0), seed=st.integers(0, 999))
def test_smooth_targets_are_distributions_and_equivalent(n, k, eps, seed):
    x, t, _ = make((n, k), seed=seed)
    q = smooth_targets(t, k, eps, dtype=torch.float64)
    assert_close(q.sum(1), torch.ones(n, dtype=torch.float64))
    assert_close(
        value_and_grad(label_smoothing_cross_entropy, x, q, 0.0),
        value_and_grad(label_smoothing_cross_entropy, x, t, eps),
    )


@pytest.mark.parametrize("spread", ["uniform", "others"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradcheck_float64(spread, weighted, path):
    x, t, g = make((5, 4, 2))
    t[0, 0] = -100
    w = torch.rand(4, generator=g, dtype=torch.float64) if weighted else None
    x[1, 2, 1] = -INF  # an impossible class (not a target)
    t[1, 1] = 0
    x.requires_grad_()
    fn = lambda x: label_smoothing_cross_entropy(x, t, 0.3, w, spread=spread)  # noqa: E731
    q = torch.softmax(torch.randn(5, 4, 2, generator=g, dtype=torch.float64), 1)
    soft = lambda x: label_smoothing_cross_entropy(x, q, 0.3, w, spread=spread)  # noqa: E731
    finite = x.detach().clone().masked_fill(x.detach() == -INF, -2.0).requires_grad_()
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradcheck(soft, (finite,))
    assert torch.autograd.gradgradcheck(fn, (finite,))


# --- peers: fastai 2.8 and timm 1.0 --------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_fastai_without_weight(reduction):
    x, t, _ = make((16, 10), dtype=torch.float32)
    assert_close(
        value_and_grad(LabelSmoothingCrossEntropy(0.1, reduction=reduction), x, t),
        value_and_grad(FastaiLS(0.1, reduction=reduction), x, t),
    )


def test_with_weight_follows_torch_not_fastai():
    """fastai weights only the NLL term; PyTorch (and lsmooth) weight the uniform term too."""
    x, t, _ = make((16, 10))
    w = torch.linspace(0.2, 2.0, 10, dtype=torch.float64)
    ours = LabelSmoothingCrossEntropy(0.1, w)(x, t)
    assert_close(ours, F.cross_entropy(x, t, w, label_smoothing=0.1))
    assert not torch.isclose(ours, FastaiLS(0.1, w)(x, t), rtol=1e-3)


def test_matches_timm_2d():
    x, t, _ = make((16, 10), dtype=torch.float32)
    assert_close(
        value_and_grad(LabelSmoothingCrossEntropy(0.1), x, t),
        value_and_grad(TimmLS(0.1), x, t),
    )


def test_nd_input_is_correct_where_timm_is_not():
    x, t, _ = make((4, 5, 5), dtype=torch.float32)  # (N, K, T) with T == K: timm runs silently
    flat = F.cross_entropy(x.movedim(1, -1).reshape(-1, 5), t.reshape(-1), label_smoothing=0.1)
    assert_close(LabelSmoothingCrossEntropy(0.1)(x, t), flat)
    assert not torch.isclose(TimmLS(0.1)(x, t), flat, rtol=1e-3)  # timm takes the last axis as K


def test_fastai_invariant_transposed_equals_flattened():
    # fastai's own test: the loss of output.transpose(-1,-2) (N,K,T) equals the flattened (N·T,K).
    output = torch.randn(32, 5, 10)
    target = torch.randint(0, 10, (32, 5))
    loss = LabelSmoothingCrossEntropy(0.1)
    assert_close(loss(output.transpose(-1, -2), target), loss(output.flatten(0, 1), target.flatten()))


def test_flat_variant_matches_fastai_flat_and_moved_axis():
    x = torch.randn(4, 6, 9)  # (N, T, K): class axis last
    t = torch.randint(0, 9, (4, 6))
    ours = value_and_grad(LabelSmoothingCrossEntropyFlat(0.1), x, t)
    assert_close(ours, value_and_grad(FastaiLSFlat(eps=0.1), x, t))
    assert_close(ours[0], LabelSmoothingCrossEntropy(0.1)(x.movedim(-1, 1), t))
    seg = torch.randn(2, 4, 3, 3)
    assert_close(LabelSmoothingCrossEntropyFlat(axis=1).activation(seg).sum(1), torch.ones(2, 3, 3))
    assert LabelSmoothingCrossEntropyFlat().decodes(x).shape == (4, 6)


# --- conventions and hand-computed values -------------------------------------------------------

def test_worked_example_from_reference():
    # REFERENCE.md §1: logits [[1,8,1],[1,1,8]], targets [1,2]: CE 0.0018, uniform 0.2352, others 0.3518.
    x = torch.tensor([[1.0, 8.0, 1.0], [1.0, 1.0, 8.0]], dtype=torch.float64)
    t = torch.tensor([1, 2])
    assert round(label_smoothing_cross_entropy(x, t, 0.0).item(), 4) == 0.0018
    assert round(label_smoothing_cross_entropy(x, t, 0.05).item(), 4) == 0.2352
    assert round(label_smoothing_cross_entropy(x, t, 0.05, spread="others").item(), 4) == 0.3518
    # 'others' is the clamp of the one-hot to [eps/(K-1), 1-eps]
    clamp = F.one_hot(t, 3).double().clamp(0.05 / 2, 0.95)
    assert_close(label_smoothing_cross_entropy(x, t, 0.05, spread="others"), F.cross_entropy(x, clamp))


def test_hand_computed_single_row():
    # x = [0, 0, ln 2]: p = [1/4, 1/4, 1/2]; l = [ln 4, ln 4, ln 2]; y = 2, eps = 0.3, K = 3.
    # uniform: 0.7·ln 2 + 0.1·(2 ln 4 + ln 2) = 0.7·ln2 + 0.5·ln2 = 1.2·ln 2
    # others:  0.7·ln 2 + 0.15·(2 ln 4)      = 0.7·ln2 + 0.6·ln2 = 1.3·ln 2
    x = torch.tensor([[0.0, 0.0, math.log(2)]], dtype=torch.float64)
    t = torch.tensor([2])
    assert_close(label_smoothing_cross_entropy(x, t, 0.3).item(), 1.2 * math.log(2))
    assert_close(label_smoothing_cross_entropy(x, t, 0.3, spread="others").item(), 1.3 * math.log(2))


def test_others_is_uniform_with_rescaled_eps(path):
    x, t, _ = make((11, 7))
    eps = 0.2
    assert_close(
        value_and_grad(label_smoothing_cross_entropy, x, t, eps, spread="others"),
        value_and_grad(label_smoothing_cross_entropy, x, t, eps * 7 / 6),
    )
    q = smooth_targets(t, 7, eps, spread="others").double()
    assert_close(q.gather(1, t[:, None]).squeeze(1), torch.full((11,), 1 - eps, dtype=torch.float64))
    assert_close(q.amin(1), torch.full((11,), eps / 6, dtype=torch.float64))


@pytest.mark.parametrize("r", [-0.5, -2.0, -6.0])
def test_negative_smoothing_formula(r, path):
    # Wei et al. 2022: (1 - r)·NLL + r·mean_c(-log p_c)
    x, t, _ = make((13, 6))
    logp = torch.log_softmax(x, 1)
    expected = ((1 - r) * -logp.gather(1, t[:, None]).squeeze(1) + r * -logp.mean(1)).mean()
    assert_close(label_smoothing_cross_entropy(x, t, r), expected)


def test_eps_zero_is_cross_entropy(path):
    x, t, _ = make((10, 4, 2))
    assert_close(
        value_and_grad(LabelSmoothingCrossEntropy(0.0), x, t),
        value_and_grad(F.cross_entropy, x, t),
    )


# --- where PyTorch gives inf or NaN ---------------------------------------------------------------

def test_minus_inf_logits_are_left_out_of_the_uniform_term(path):
    x, t, _ = make((6, 5))
    t = t % 3  # targets among the first three classes
    masked = x.clone()
    masked[:, 3:] = -INF
    assert torch.isinf(F.cross_entropy(masked, t, label_smoothing=0.1))
    ours = value_and_grad(label_smoothing_cross_entropy, masked, t, 0.1)
    # equals smoothing over the 3 remaining classes only
    theirs = value_and_grad(F.cross_entropy, x[:, :3], t, label_smoothing=0.1)
    assert_close(ours[0], theirs[0])
    assert_close(ours[1][:, :3], theirs[1])
    assert not ours[1][:, 3:].any()
    # the same for soft targets and for 'others'
    q = F.one_hot(t, 5).double()
    assert_close(label_smoothing_cross_entropy(masked, q, 0.1), theirs[0])
    assert_close(
        label_smoothing_cross_entropy(masked, t, 0.1, spread="others"),
        label_smoothing_cross_entropy(x[:, :3], t, 0.1, spread="others"),
    )


def test_minus_inf_on_some_rows_only_with_weights(path):
    x, t, g = make((8, 4))
    t = t % 2
    w = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    masked = x.clone()
    masked[::2, 3] = -INF
    rows = label_smoothing_cross_entropy(masked, t, 0.2, w, "none")
    assert_close(rows[1::2], F.cross_entropy(x[1::2], t[1::2], w, reduction="none", label_smoothing=0.2))
    assert_close(rows[::2], F.cross_entropy(x[::2, :3], t[::2], w[:3], reduction="none", label_smoothing=0.2))


def test_impossible_target_class_is_infinite():
    x = torch.tensor([[0.0, -INF, 1.0]])
    assert torch.isinf(label_smoothing_cross_entropy(x, torch.tensor([1]), 0.1))


@pytest.mark.parametrize("case", ["empty", "all_ignored"])
def test_empty_or_fully_ignored_batch_is_zero(case, path):
    if case == "empty":
        x, t = torch.randn(0, 5), torch.zeros(0, dtype=torch.long)
    else:
        x, t = torch.randn(4, 5), torch.full((4,), -100)
    assert torch.isnan(F.cross_entropy(x, t, label_smoothing=0.1))
    loss, grad = value_and_grad(label_smoothing_cross_entropy, x, t, 0.1)
    assert loss.item() == 0.0 and not grad.any()


# --- precision and memory -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype, path):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 50_000, generator=g) * 4).to(dtype)
    t = torch.randint(0, 50_000, (8,), generator=g)
    loss, grad = value_and_grad(label_smoothing_cross_entropy, x, t, 0.1)
    ref_loss, ref_grad = value_and_grad(F.cross_entropy, x.double(), t, label_smoothing=0.1)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert torch.isfinite(loss)
    assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    # the gradient is rounded once, to the logits' dtype
    assert_close(grad.double(), ref_grad.to(dtype).double(), rtol=1e-2, atol=1e-6)


def test_index_path_saves_no_n_by_k_tensor_but_the_input():
    x = torch.randn(64, 100, requires_grad=True)
    t = torch.randint(0, 100, (64,))
    big = []

    def pack(saved):
        if saved.numel() >= x.numel() and saved.data_ptr() != x.data_ptr():
            big.append(tuple(saved.shape))
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s):
        loss = label_smoothing_cross_entropy(x, t, 0.1, torch.rand(100))
    loss.backward()
    assert big == []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s):
        F.cross_entropy(x, t, label_smoothing=0.1)  # the check can fail: torch saves log-probs
    assert big


def test_one_exponentiating_pass_for_forward_and_backward():
    from torch.utils._python_dispatch import TorchDispatchMode

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

    x = torch.randn(300, 1000, requires_grad=True)  # above _SMALL: the autograd.Function
    t = torch.randint(0, 1000, (300,))
    with CountExpPasses() as ours:
        label_smoothing_cross_entropy(x, t, 0.1).backward()
    with CountExpPasses() as torchs:  # the check can fail: torch's log_softmax + its backward
        F.cross_entropy(x, t, label_smoothing=0.1).backward()
    assert len(ours.calls) == 1, ours.calls
    assert torchs.calls == ["_log_softmax", "_log_softmax_backward_data"]


# --- the Function's internal branches -----------------------------------------------------------

CASES = ["plain", "weighted_ignore", "minus_inf", "underflow"]


def case_inputs(case, dtype=torch.float64):
    """Logits, targets and keyword arguments that take one branch of the loss's autograd.Function."""
    x, t, g = make((40, 7), dtype=dtype)
    kw = {}
    if case == "weighted_ignore":
        kw = dict(weight=torch.rand(7, generator=g, dtype=dtype) + 0.1, ignore_index=3)
        t[::4] = 3
    if case == "underflow":  # confident and wrong: softmax(x)[y] is below the smallest normal float
        x[::2].mul_(1000 if dtype == torch.float64 else 100)
        assert (torch.softmax(x, 1).gather(1, t[:, None]) < torch.finfo(dtype).tiny).sum() >= 5
    if case == "minus_inf":
        t = t % 5
        x[::3, 5:] = -INF  # its values are compared with torch by the -inf tests above
    return x, t, kw


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_without_grad_equals_forward_with_grad(case, dtype, path):
    x, t, kw = case_inputs(case, dtype)
    with_grad = label_smoothing_cross_entropy(x.clone().requires_grad_(), t, 0.1, reduction="none", **kw)
    with torch.no_grad():
        no_grad = label_smoothing_cross_entropy(x.clone().requires_grad_(), t, 0.1, reduction="none", **kw)
    plain = label_smoothing_cross_entropy(x, t, 0.1, reduction="none", **kw)  # no input requires grad
    assert torch.isfinite(with_grad).all()
    assert_close(no_grad, with_grad.detach(), rtol=0, atol=0)
    assert_close(plain, with_grad.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weighted"])
def test_rows_whose_target_probability_underflows_match_torch(dtype, weighted, path):
    x, t, kw = case_inputs("weighted_ignore" if weighted else "plain", dtype)
    x[::2].mul_(1000 if dtype == torch.float64 else 100)
    assert (torch.softmax(x, 1).gather(1, t[:, None]) < torch.finfo(dtype).tiny).sum() >= 5
    ours = value_and_grad(label_smoothing_cross_entropy, x, t, 0.1, reduction="none", **kw)
    theirs = value_and_grad(F.cross_entropy, x, t, label_smoothing=0.1, reduction="none", **kw)
    assert_close(ours, theirs)


@pytest.mark.parametrize("case", ["plain", "weighted_ignore", "underflow"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_any_upstream_gradient_matches_torch(case, reduction, path):
    """'mean' and 'sum' hand backward one scale for all rows (a one-pass branch on CPU); 'none' with
    random upstream gradients does not."""
    x, t, kw = case_inputs(case)
    upstream, grads = None, []
    for fn, smoothing in ((label_smoothing_cross_entropy, {"eps": 0.1}), (F.cross_entropy, {"label_smoothing": 0.1})):
        xg = x.clone().requires_grad_()
        loss = fn(xg, t, reduction=reduction, **smoothing, **kw)
        if upstream is None:
            upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype) + 0.5
        grads.append(torch.autograd.grad(loss, xg, upstream)[0])
    assert_close(grads[0], grads[1])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_accelerator_branch_of_the_scaled_backward(reduction, monkeypatch):
    """On CUDA the backward keeps g as a tensor (no host sync, the general path); run that on CPU tensors."""
    x, t, _ = make((40, 300))
    expected = value_and_grad(F.cross_entropy, x, t, label_smoothing=0.1, reduction=reduction)
    with code_path("function"):
        monkeypatch.setattr(losses, "_HOST_DEVICES", ())
        accelerator = value_and_grad(label_smoothing_cross_entropy, x, t, 0.1, reduction=reduction)
        monkeypatch.undo()
        host = value_and_grad(label_smoothing_cross_entropy, x, t, 0.1, reduction=reduction)
    assert_close(accelerator, expected)
    assert_close(host, expected)


@pytest.mark.parametrize("case", CASES)
def test_second_backward_recomputes_the_softmax(case, path):
    x, t, kw = case_inputs(case)
    x.requires_grad_()
    loss = label_smoothing_cross_entropy(x, t, 0.1, **kw)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)  # uses the softmax stored by forward
    (second,) = torch.autograd.grad(loss, x)  # recomputes it
    assert torch.isfinite(first).all()
    assert_close(second, first)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_works_inside_torch_compile(backend, path):
    """Compiled training steps call the loss too: it graph-breaks at its syncs and stays exact."""
    x, t, _ = make((300, 300))
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, t: loss_fn(x, t), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes about graph breaks
        ours = value_and_grad(compiled, x, t)
    assert_close(ours, value_and_grad(F.cross_entropy, x, t, label_smoothing=0.1))


# --- fastai compatibility -----------------------------------------------------------------------

def test_fastai_attributes_and_class_axis():
    loss = LabelSmoothingCrossEntropy()
    assert loss.y_int is True
    seg = torch.randn(2, 4, 3, 5)
    assert_close(loss.activation(seg).sum(1), torch.ones(2, 3, 5))
    assert_close(loss.decodes(seg), seg.argmax(1))
    # fastai#3603: fastai's own activation normalises the last axis of a (N, K, H, W) output
    assert not torch.allclose(FastaiLS().activation(seg).sum(1), torch.ones(2, 3, 5))


def test_reduction_is_a_plain_settable_attribute():
    from fastai.losses import NoneReduce

    x, t, _ = make((6, 3))
    loss = LabelSmoothingCrossEntropy(0.1)
    with NoneReduce(loss) as per_item:
        rows = per_item(x, t)
    assert rows.shape == (6,) and loss.reduction == "mean"
    assert_close(rows.mean(), loss(x, t))


def test_pickle_round_trip_keeps_settings():
    w = torch.rand(5)
    loss = LabelSmoothingCrossEntropy(0.2, w, "sum", ignore_index=3, spread="others")
    again = pickle.loads(pickle.dumps(loss))
    x, t, _ = make((7, 5), dtype=torch.float32)
    assert_close(again(x, t), loss(x, t))
    assert (again.eps, again.reduction, again.ignore_index, again.spread) == (0.2, "sum", 3, "others")
    flat = pickle.loads(pickle.dumps(LabelSmoothingCrossEntropyFlat(0.1, axis=1)))
    assert flat.axis == 1


def test_fastai_tensor_subclasses_are_accepted():
    from fastai.torch_core import TensorCategory, TensorImage

    x, t, _ = make((6, 4), dtype=torch.float32)
    loss = LabelSmoothingCrossEntropy(0.1)(TensorImage(x), TensorCategory(t))
    assert_close(loss.as_subclass(torch.Tensor), F.cross_entropy(x, t, label_smoothing=0.1))


def test_weight_buffer_follows_module_to():
    loss = LabelSmoothingCrossEntropy(0.1, torch.ones(3)).to(torch.float64)
    assert loss.weight.dtype == torch.float64 and "weight" in loss.state_dict()


# --- binary / multi-label -----------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_matches_torch_on_smoothed_targets(reduction, weighted):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (6, 4), generator=g).double()
    w = torch.rand(4, generator=g, dtype=torch.float64) if weighted else None
    pw = torch.rand(4, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    loss = LabelSmoothingBCEWithLogits(0.2, w, reduction, pos_weight=pw).double()
    expected = F.binary_cross_entropy_with_logits(x, y * 0.8 + 0.1, w, pos_weight=pw, reduction=reduction)
    assert_close(value_and_grad(loss, x, y), value_and_grad(
        lambda x: F.binary_cross_entropy_with_logits(x, y * 0.8 + 0.1, w, pos_weight=pw, reduction=reduction), x
    ))
    assert_close(loss(x, y), expected)


def test_bce_hand_computed_and_fastai_attributes():
    # x = 0 gives p = 1/2 whatever the target: loss = ln 2 per element for any y' in [0, 1].
    loss = LabelSmoothingBCEWithLogits(0.1)
    assert_close(loss(torch.zeros(2, 3), torch.ones(2, 3)).item(), math.log(2))
    # y = 1, eps = 0.2: y' = 0.9; x = ln 9: p = 0.9; loss = -(0.9 ln 0.9 + 0.1 ln 0.1)
    x = torch.tensor([[math.log(9)]], dtype=torch.float64)
    expected = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert_close(LabelSmoothingBCEWithLogits(0.2)(x, torch.ones(1, 1)).item(), expected)
    assert loss.y_int is False
    assert_close(loss.activation(torch.zeros(2)), torch.full((2,), 0.5))
    assert loss.decodes(torch.tensor([0.2, 0.7])).tolist() == [False, True]


# --- helpers ------------------------------------------------------------------------------------

def test_reduce_loss_and_linear_combination():
    v = torch.tensor([1.0, 2.0, 6.0])
    assert reduce_loss(v).item() == 3.0 and reduce_loss(v, "sum").item() == 9.0
    assert reduce_loss(v, "none") is v
    assert linear_combination(10.0, 20.0, 0.25) == 17.5  # 0.25·10 + 0.75·20
    with pytest.raises(ValueError, match=r"reduction='avg'.*'mean', 'sum', 'none'"):
        reduce_loss(v, "avg")


def test_smooth_targets_layout_matches_logits():
    t = torch.tensor([[0, 2], [1, 1]])
    q = smooth_targets(t, 3, 0.3)
    assert q.shape == (2, 3, 2)
    assert_close(q[:, :, 0], torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]))


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=1.5), r"eps=1.5 is not allowed; eps must be finite and <= 1"),
        (dict(eps=math.nan), r"eps=nan"),
        (dict(eps=math.inf), r"eps=inf"),
        (dict(eps="a lot"), r"eps='a lot' must be a real number"),
        (dict(reduction="avg"), r"reduction='avg' is not supported; use one of 'mean', 'sum', 'none'"),
        (dict(spread="smart"), r"spread='smart' is not supported; use one of 'uniform', 'others'"),
        (dict(weight=torch.ones(2, 2)), r"weight has shape \(2, 2\); expected \(K,\)"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelSmoothingCrossEntropy(**kwargs)


@pytest.mark.parametrize(
    "x, t, message",
    [
        (
            torch.randn(4, 3),
            torch.tensor([0, 1, 3, 0]),
            r"class index 3 at position \(2,\); class indices must be in \[0, 3\) \(or ignore_index=-100\)",
        ),
        (torch.randn(4, 3), torch.tensor([0, -1, 2, 0]), r"class index -1"),
        (torch.randn(4), torch.tensor([0, 1, 1, 0]), r"logits must have shape \(N, K\).*got shape \(4,\)"),
        (torch.randn(4, 1), torch.zeros(4, dtype=torch.long), r"K=1 classes.*need K >= 2"),
        (
            torch.randn(4, 3),
            torch.zeros(5, dtype=torch.long),
            r"target has shape \(5,\); logits of shape \(4, 3\) need class indices of shape \(4,\)",
        ),
        (torch.randn(4, 3), torch.zeros(4), r"index targets must have an integer dtype, got torch.float32"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.bool), r"integer dtype, got torch.bool"),
        (torch.randn(4, 3), torch.full((4, 2), 0.5), r"soft target has shape \(4, 2\); it must match .* \(4, 3\)"),
        (torch.randn(2, 3), torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]), r"row 0 is not a distribution \(sum=1.5"),
        (torch.randn(2, 3), torch.tensor([[1.0, 0.0, 0.0], [1.5, -0.5, 0.0]]), r"soft target row 1 .*min=-0.5"),
    ],
)
def test_bad_inputs_name_the_value(x, t, message):
    with pytest.raises(ValueError, match=message):
        LabelSmoothingCrossEntropy(0.1)(x, t)


def test_bad_weight_length_and_bad_reduction_set_later():
    with pytest.raises(ValueError, match=r"weight has shape \(4,\); expected \(3,\)"):
        LabelSmoothingCrossEntropy(0.1, torch.ones(4))(torch.randn(2, 3), torch.tensor([0, 1]))
    loss = LabelSmoothingCrossEntropy()
    loss.reduction = "batchmean"
    with pytest.raises(ValueError, match="reduction='batchmean'"):
        loss(torch.randn(2, 3), torch.tensor([0, 1]))


def test_bce_bad_input():
    with pytest.raises(ValueError, match=r"eps=-0.1 is not allowed; eps must be in \[0, 1\]"):
        LabelSmoothingBCEWithLogits(-0.1)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]; got values in \[0, 2\]"):
        LabelSmoothingBCEWithLogits()(torch.zeros(2), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match=r"target has shape \(3,\)"):
        LabelSmoothingBCEWithLogits()(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"num_classes=1"):
        smooth_targets(torch.tensor([0]), 1)
