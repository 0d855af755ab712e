"""lsmooth.losses against PyTorch, fastai, timm, the reference twin and hand-computed values.

Tolerances: float64 comparisons use torch.testing's float64 defaults (rtol 1e-7, atol 1e-7)
unless stated; float32 ones its float32 defaults (rtol 1.3e-6, atol 1e-5).
"""

import contextlib
import math
import pickle
import shutil
import subprocess
import sys
from io import BytesIO

import pytest
import torch
import torch.nn.functional as F
from fastai.layers import NoneReduce
from fastai.losses import LabelSmoothingCrossEntropy as FastaiLS
from fastai.losses import LabelSmoothingCrossEntropyFlat as FastaiLSFlat
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.loss import LabelSmoothingCrossEntropy as TimmLS
from torch.overrides import TorchFunctionMode
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.op_counts import CountOps  # the counter whose numbers benchmarks/ reports
from lsmooth import (
    LabelSmoothingBCEWithLogits,
    LabelSmoothingCrossEntropy,
    LabelSmoothingCrossEntropyFlat,
    fused,
    label_smoothing_cross_entropy,
    losses,
    reduce_loss,
    smooth_targets,
)
from lsmooth.losses import (
    ConfidencePenaltyCrossEntropy,
    confidence_penalty_cross_entropy,
    label_smoothing_cross_entropy_reference,
)

INF = math.inf

# The loss has three code paths. "host": CPU eager, where it may read values (friendly errors, the
# unmasked first try); "device": what runs on CUDA, meta and under torch.compile (no host reads,
# masks always), forced here on CPU tensors; "fused": the one-softmax CPU path of lsmooth/fused.py,
# forced here on small inputs. Tests that take `path` run on each.
PATHS = {
    "host": [],
    "device": [(losses, "HOST_READS", False)],
    "fused": [(fused, "MIN_LOGITS", 1)],
}


@contextlib.contextmanager
def code_path(name):
    saved = [(module, key, getattr(module, key)) for module, key, _ in PATHS[name]]
    for module, key, value in PATHS[name]:
        setattr(module, key, value)
    try:
        yield
    finally:
        for module, key, value in saved:
            setattr(module, key, value)


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


# --- drop-in parity: unbatched logits, soft targets with ignore_index, torch.func, float64 weights -----

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weighted"])
@pytest.mark.parametrize("kind", ["index", "soft", "ignored"])
def test_unbatched_logits_match_torch(kind, reduction, weighted, path):
    """Logits (K,) with a 0-d class index or (K,) probabilities: value, gradient and shape as
    F.cross_entropy ('none' included: a 0-d tensor). An ignored index gives 0 ('mean': NaN in torch)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, generator=g, dtype=torch.float64) * 3
    t = {"index": torch.tensor(4), "soft": torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0),
         "ignored": torch.tensor(-100)}[kind]  # fmt: skip
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    ours = value_and_grad(label_smoothing_cross_entropy, x, t, 0.2, w, reduction)
    theirs = value_and_grad(F.cross_entropy, x, t, w, reduction=reduction, label_smoothing=0.2)
    assert ours[0].shape == theirs[0].shape == ()
    if kind == "ignored" and reduction == "mean":
        assert theirs[0].isnan() and ours[0] == 0 and not ours[1].any()
    else:
        assert_close(ours, theirs)


@pytest.mark.parametrize("ignore_index", [-100, -1, 0, 3, 255])
@pytest.mark.parametrize("unbatched", [False, True])
def test_soft_targets_refuse_ignore_index_where_torch_does(ignore_index, unbatched):
    """torch 2.14 refuses ignore_index >= 0 with probability targets and ignores a negative one."""
    x, _, g = make((5, 4))
    q = torch.softmax(torch.randn(5, 4, generator=g, dtype=torch.float64), 1)
    x, q = (x[0], q[0]) if unbatched else (x, q)
    try:
        expected = F.cross_entropy(x, q, ignore_index=ignore_index, label_smoothing=0.1)
    except RuntimeError as error:
        assert ignore_index >= 0 and "ignore_index is not supported for floating point target" in str(error)
        with pytest.raises(ValueError, match=rf"ignore_index={ignore_index} applies only to class indices"):
            label_smoothing_cross_entropy(x, q, 0.1, ignore_index=ignore_index)
    else:
        assert ignore_index < 0
        assert_close(label_smoothing_cross_entropy(x, q, 0.1, ignore_index=ignore_index), expected)


@pytest.mark.parametrize("per_sample", ["unbatched", "batch of one"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weighted"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_per_sample_gradients_under_vmap_match_torch(per_sample, weighted, reduction):
    """vmap(grad(loss)) (differential privacy, influence functions): per-sample gradients equal
    PyTorch's. Inside torch.func the loss reads no values; a CPU read would fail under vmap."""
    from torch.func import grad, vmap

    x, t, g = make((8, 5))
    t[::3] = -100  # ignored samples: zero gradient
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    lift = (lambda a: a) if per_sample == "unbatched" else (lambda a: a[None])

    def ours(xi, ti):
        return LabelSmoothingCrossEntropy(0.1, w, reduction)(lift(xi), lift(ti))

    def theirs(xi, ti):
        return F.cross_entropy(lift(xi), lift(ti), w, reduction=reduction, label_smoothing=0.1)

    expected = vmap(grad(theirs))(x, t)
    assert_close(vmap(grad(ours))(x, t), expected)
    assert not expected[::3].any()


def test_float64_weights_stay_float64():
    """Class weights keep the caller's floating dtype (a float32 copy would be off by ~4e-8 relative,
    hence rtol 1e-12 here); the buffers follow .double()/.float(); integer weights take the default dtype."""
    x, t, g = make((40, 7))
    w = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    ours = LabelSmoothingCrossEntropy(0.1, w)
    assert ours.weight.dtype == torch.float64
    assert_close(value_and_grad(ours, x, t), value_and_grad(F.cross_entropy, x, t, w, label_smoothing=0.1),
                 rtol=1e-12, atol=1e-12)  # fmt: skip
    assert LabelSmoothingCrossEntropy(0.1, w.float()).double().weight.dtype == torch.float64
    assert LabelSmoothingCrossEntropy(0.1, w).float().weight.dtype == torch.float32
    assert LabelSmoothingCrossEntropy(0.1, [1, 2, 3, 4, 5, 6, 7]).weight.dtype == torch.get_default_dtype()
    y = torch.randint(0, 2, (40, 7), generator=g).double()
    bce = LabelSmoothingBCEWithLogits(0.2, w, pos_weight=w * 3)
    assert bce.weight.dtype == bce.pos_weight.dtype == torch.float64
    assert_close(bce(x, y), F.binary_cross_entropy_with_logits(x, y * 0.8 + 0.1, w, pos_weight=w * 3),
                 rtol=1e-12, atol=1e-12)  # fmt: skip
    assert LabelSmoothingBCEWithLogits(0.2, w.float(), pos_weight=w.float()).double().pos_weight.dtype == torch.float64


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


@pytest.mark.parametrize(
    "x_shape, t_shape, axis",
    [((8, 5), (8, 1), -1), ((8, 5), (8,), -1), ((3, 4, 5), (3, 4), -1), ((2, 5, 3, 4), (2, 3, 4), 1)],
    ids=["tabular (N,1)", "(N,)", "sequence", "segmentation"],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_flat_accepts_what_fastai_cross_entropy_flat_accepts(x_shape, t_shape, axis, reduction):
    """fastai's CrossEntropyLossFlat flattens the logits to (-1, K) along `axis` and the target to
    (-1,); 'none' returns one loss per flattened item. eps=0 makes ours plain cross-entropy."""
    from fastai.losses import CrossEntropyLossFlat

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*x_shape, generator=g)
    t = torch.randint(0, x_shape[axis], t_shape, generator=g)
    ours = value_and_grad(LabelSmoothingCrossEntropyFlat(0.0, reduction=reduction, axis=axis), x, t)
    theirs = value_and_grad(CrossEntropyLossFlat(reduction=reduction, axis=axis), x, t)
    assert ours[0].shape == theirs[0].shape == ((math.prod(t_shape),) if reduction == "none" else ())
    if reduction == "none" and len(x_shape) == 4:  # fastai transposes (axis, -1); we move the axis to the end
        ours = (ours[0].reshape(2, 3, 4).transpose(1, 2).reshape(-1), ours[1])
    assert_close(ours, theirs)


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


@pytest.mark.parametrize("r", [-0.1, -0.5])
def test_torch_silently_computes_plain_cross_entropy_for_negative_smoothing(r):
    """torch 2.14 accepts label_smoothing < 0 without a word and returns the eps = 0 value exactly
    (docs/losses.md); lsmooth computes negative label smoothing (the test above)."""
    x, t, _ = make((13, 6))
    assert torch.equal(F.cross_entropy(x, t, label_smoothing=r), F.cross_entropy(x, t))
    assert not torch.isclose(label_smoothing_cross_entropy(x, t, r), F.cross_entropy(x, t), rtol=1e-3)


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


# --- fallbacks, backward variants, no host reads, torch.compile ---------------------------------

CASES = ["plain", "weighted_ignore", "minus_inf", "underflow"]


def case_inputs(case, dtype=torch.float64):
    """Logits, targets and keyword arguments that take one branch of the loss."""
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


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weighted"])
def test_rows_whose_target_probability_underflows_match_torch(reduction, dtype, weighted, path):
    x, t, kw = case_inputs("weighted_ignore" if weighted else "plain", dtype)
    x[::2].mul_(1000 if dtype == torch.float64 else 100)
    assert (torch.softmax(x, 1).gather(1, t[:, None]) < torch.finfo(dtype).tiny).sum() >= 5
    ours = value_and_grad(label_smoothing_cross_entropy, x, t, 0.1, reduction=reduction, **kw)
    theirs = value_and_grad(F.cross_entropy, x, t, label_smoothing=0.1, reduction=reduction, **kw)
    assert_close(ours, theirs)


@pytest.mark.parametrize("case", ["plain", "weighted_ignore", "underflow"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_any_upstream_gradient_matches_torch(case, reduction, path):
    x, t, kw = case_inputs(case)
    upstream, grads = None, []
    for fn, smoothing in ((label_smoothing_cross_entropy, {"eps": 0.1}), (F.cross_entropy, {"label_smoothing": 0.1})):
        xg = x.clone().requires_grad_()
        loss = fn(xg, t, reduction=reduction, **smoothing, **kw)
        if upstream is None:
            upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype) + 0.5
        grads.append(torch.autograd.grad(loss, xg, upstream)[0])
    assert_close(grads[0], grads[1])


@pytest.mark.parametrize("case", CASES)
def test_second_backward_recomputes_the_softmax(case, path):
    x, t, kw = case_inputs(case)
    x.requires_grad_()
    loss = label_smoothing_cross_entropy(x, t, 0.1, **kw)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)  # the fused path: the softmax stored by forward
    (second,) = torch.autograd.grad(loss, x)  # recomputed
    assert torch.isfinite(first).all()
    assert_close(second, first)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_double_backward(reduction, path):
    x, t, _ = make((6, 5))
    x.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: label_smoothing_cross_entropy(x, t, 0.2, reduction=reduction), (x,))


class NoHostReads(TorchDispatchMode):
    """Fails on every way a tensor value reaches Python (item, int, float, bool, tolist) and on
    ops whose output shape depends on values."""

    reads = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.reads or func.overloadpacket is torch.ops.aten.masked_select:
            raise AssertionError(f"host read: {func}")
        return func(*args, **(kwargs or {}))


class NoToList(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.tolist:  # copies straight from memory: no dispatcher op to catch
            raise AssertionError("host read: tolist")
        return func(*args, **(kwargs or {}))


def device_cases():
    """(name, loss function, logits, target) for every path of the loss family."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(64, 37, generator=g), torch.randint(0, 37, (64,), generator=g)
    t_ign = t.clone()
    t_ign[::5] = -100
    w = torch.rand(37, generator=g) + 0.5
    seg, seg_t = torch.randn(2, 5, 3, 4, generator=g), torch.randint(0, 5, (2, 3, 4), generator=g)
    big, big_t = torch.randn(4, 32000, generator=g), torch.randint(0, 32000, (4,), generator=g)
    minus_inf = x.clone()
    minus_inf[::2, 30:] = -INF
    q = torch.softmax(torch.randn(64, 37, generator=g), 1)
    cases = []
    for red in ("mean", "sum", "none"):
        cases += [
            (f"index {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), x, t),
            (f"ignore_index {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), x, t_ign),
            (f"weights+ignore {red}", LabelSmoothingCrossEntropy(0.1, w, red, spread="others"), x, t_ign),
            (f"N-d {red}", LabelSmoothingCrossEntropy(0.1, reduction=red, ignore_index=2), seg, seg_t),
            (f"Flat {red}", LabelSmoothingCrossEntropyFlat(0.1, reduction=red, axis=1), seg, seg_t),
            (f"soft {red}", LabelSmoothingCrossEntropy(0.1, w, red), x, q),
            (f"-inf {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), minus_inf, t % 30),
            (f"32000 classes {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), big, big_t),
            (f"bf16 {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), big.bfloat16(), big_t),
            (f"fp16 {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), x.half(), t),
            (f"BCE {red}", LabelSmoothingBCEWithLogits(0.1, reduction=red), x, (q > 0.03).float()),
            (f"unbatched {red}", LabelSmoothingCrossEntropy(0.1, w, red), x[0], t[0]),
            (f"unbatched soft {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), x[0], q[0]),
            (f"penalty {red}", ConfidencePenaltyCrossEntropy(0.1, w, red), minus_inf, t_ign % 30),
            (f"penalty N-d {red}", ConfidencePenaltyCrossEntropy(0.1, reduction=red, ignore_index=2), seg, seg_t),
        ]
    return cases


DEVICE_CASES = device_cases()


@pytest.mark.parametrize("name, loss_fn, x, t", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_runs_on_meta_tensors(name, loss_fn, x, t):
    """Forward and backward read no value: they run on tensors that have none, as F.cross_entropy does."""
    xm = x.to("meta").requires_grad_()
    loss = loss_fn(xm, t.to("meta"))
    loss.sum().backward()
    assert loss.shape == loss_fn(x, t).shape and xm.grad.shape == x.shape and xm.grad.dtype == x.dtype


@pytest.mark.parametrize("name, loss_fn, x, t", DEVICE_CASES, ids=[c[0] for c in DEVICE_CASES])
def test_no_host_reads_where_they_are_not_free(name, loss_fn, x, t, monkeypatch):
    """On CPU tensors with the host predicate forced false (the CUDA case), forward and backward
    read no value into Python, and the values equal the host path's."""
    expected = value_and_grad(loss_fn, x, t)
    monkeypatch.setattr(losses, "HOST_READS", False)
    with NoHostReads(), NoToList():
        got = value_and_grad(loss_fn, x, t)
    assert_close(got, expected, equal_nan=True)


def test_the_host_read_detector_can_fail():
    x, t = torch.randn(300, 1000), torch.randint(0, 1000, (300,))
    for read in (lambda: label_smoothing_cross_entropy(x, t, 0.1), lambda: torch.ones(2).tolist()):
        with pytest.raises(AssertionError, match="host read"), NoHostReads(), NoToList():
            read()  # the host path reads the target's minimum; the fused path reads its sums


@pytest.mark.parametrize("n, k", [(64, 37), (4096, 1000)])
def test_cost_off_the_cpu(n, k):
    """Forward + backward of the plain mean loss on meta tensors (the device path: ignore and -inf
    masks always computed): at most 30 ops and 7 N×K results, against PyTorch's 22 and 4 (pinned
    too, so that the counter can fail). The -inf mask costs three N×K results: the mask, the masked
    log-probabilities and their gradient; benchmarks/op_counts.py prints the table."""

    def count(loss_fn):
        x = torch.randn(n, k, device="meta", requires_grad=True)
        t = torch.randint(0, k, (n,), device="meta")
        with CountOps(n * k) as counter:
            loss_fn(x, t).backward()
        return counter.ops, counter.large

    ops, large = count(lambda x, t: label_smoothing_cross_entropy(x, t, 0.1))
    assert ops <= 30 and large <= 7, (ops, large)
    assert count(lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1)) == (22, 4)


@pytest.mark.parametrize("k, backend", [(37, "eager"), (32000, "eager"), (37, "aot_eager")])
def test_compiles_whole(k, backend):
    """torch.compile(fullgraph=True) takes forward and backward whole; values equal eager."""
    x, t, g = make((64 if k == 37 else 8, k), dtype=torch.float32)
    t[::3] = -100
    loss_fn = LabelSmoothingCrossEntropy(0.1, torch.rand(k, generator=g) + 0.5)
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    assert_close(value_and_grad(compiled, x, t), value_and_grad(loss_fn, x, t))
    flat = LabelSmoothingCrossEntropyFlat(0.1)
    x[0, 1] = -INF  # the device path's masks
    assert_close(value_and_grad(torch.compile(flat, fullgraph=True, backend=backend), x, t.clamp(min=2)),
                 value_and_grad(flat, x, t.clamp(min=2)))  # fmt: skip
    penalty = ConfidencePenaltyCrossEntropy(0.3, torch.rand(k, generator=g) + 0.5)
    assert_close(value_and_grad(torch.compile(penalty, fullgraph=True, backend=backend), x, t.clamp(min=2)),
                 value_and_grad(penalty, x, t.clamp(min=2)))  # fmt: skip
    assert_close(value_and_grad(torch.compile(loss_fn, fullgraph=True, backend=backend), x[1], t[1]),
                 value_and_grad(loss_fn, x[1], t[1]))  # unbatched  # fmt: skip


def test_losses_py_works_copied_alone(tmp_path):
    """losses.py imports only torch: copied into an empty folder it imports and computes the loss
    without lsmooth (and so without the fused path)."""
    shutil.copy(losses.__file__, tmp_path / "losses.py")
    code = (
        "import sys, torch, torch.nn.functional as F, losses\n"
        "assert losses.fused_smoothed_nll is None\n"
        "assert not {m.split('.')[0] for m in sys.modules} & {'lsmooth', 'fastai', 'timm'}\n"
        "x = torch.randn(300, 1000, dtype=torch.float64, requires_grad=True)\n"
        "t = torch.randint(0, 1000, (300,))\n"
        "loss = losses.LabelSmoothingCrossEntropy(0.1)(x, t)\n"
        "torch.testing.assert_close(loss, F.cross_entropy(x, t, label_smoothing=0.1))\n"
        "print('ok')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    cmd = [sys.executable, "-c", code]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# --- the confidence penalty ---------------------------------------------------------------------

def penalty_reference(x, t, beta, weight=None, reduction="mean", ignore_index=-100):
    """Pereyra et al. 2017 written plainly: per row w_y·(-log p_y - β·H(p)), H(p) = -Σ p_c log p_c;
    rows with the ignored index give 0; 'mean' divides by Σ w_y over the other rows."""
    k = x.shape[1]
    logp = torch.log_softmax(x.movedim(1, -1).reshape(-1, k), 1)
    flat = t.reshape(-1)
    keep = flat != ignore_index
    y = flat.where(keep, 0)
    w_y = (torch.ones(k, dtype=logp.dtype) if weight is None else weight)[y] * keep
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    entropy = -(logp.exp() * logp).sum(1)
    rows = w_y * (nll - beta * entropy)
    if reduction == "none":
        return rows.reshape(t.shape)
    return rows.sum() if reduction == "sum" else rows.sum() / w_y.sum()


@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "weighted"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all", "ignore"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta", [0.0, 0.3, 2.0])
def test_confidence_penalty_matches_plain_reference(shape, reduction, weighted, ignore, dtype, beta):
    x, t, g = make(shape, dtype=dtype)
    w = torch.rand(shape[1], generator=g, dtype=dtype) + 0.1 if weighted else None
    if ignore:
        t.view(-1)[::3] = 255
    kw = dict(weight=w, reduction=reduction, ignore_index=255 if ignore else -100)
    ours = value_and_grad(confidence_penalty_cross_entropy, x, t, beta, **kw)
    if ignore and reduction == "mean" and t.numel() == 1:  # the only row is ignored: 0 here, NaN in the reference
        assert ours[0] == 0 and not ours[1].any()
        return
    assert_close(ours, value_and_grad(penalty_reference, x, t, beta, **kw))
    if beta == 0:  # plain cross-entropy, as PyTorch computes it
        assert_close(ours, value_and_grad(F.cross_entropy, x, t, **kw))


def test_confidence_penalty_per_sample_gradients_under_vmap():
    from torch.func import grad, vmap

    x, t, g = make((6, 5))
    t[::4] = -100
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    got = vmap(grad(lambda xi, ti: confidence_penalty_cross_entropy(xi, ti, 0.3, w)))(x, t)
    one_by_one = [value_and_grad(penalty_reference, x[i : i + 1], t[i : i + 1], 0.3, w)[1][0] for i in range(6)]
    one_by_one = [gi.nan_to_num() for gi in one_by_one]  # an ignored sample alone: NaN in the reference, 0 here
    assert_close(got, torch.stack(one_by_one))


def test_confidence_penalty_hand_computed():
    # x = [0, 0, ln 2]: p = [1/4, 1/4, 1/2], H = 2·(1/4)·ln 4 + (1/2)·ln 2 = 1.5·ln 2; y = 2: l_y = ln 2.
    # beta = 0.2: ln 2 - 0.2·1.5·ln 2 = 0.7·ln 2; with w_2 = 2: 1.4·ln 2 summed, 0.7·ln 2 averaged over Σ w_y = 2.
    x = torch.tensor([[0.0, 0.0, math.log(2)]], dtype=torch.float64)
    t = torch.tensor([2])
    w = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    assert_close(confidence_penalty_cross_entropy(x, t, 0.2).item(), 0.7 * math.log(2))
    assert_close(ConfidencePenaltyCrossEntropy(0.2, w, "sum")(x, t).item(), 1.4 * math.log(2))
    assert_close(ConfidencePenaltyCrossEntropy(0.2, w)(x, t).item(), 0.7 * math.log(2))
    assert_close(ConfidencePenaltyCrossEntropy(0.2)(x[0], t[0]).item(), 0.7 * math.log(2))  # unbatched


def test_confidence_penalty_leaves_minus_inf_logits_out_of_the_entropy():
    x, t, _ = make((6, 5))
    t = t % 3
    masked = x.clone()
    masked[:, 3:] = -INF
    ours = value_and_grad(confidence_penalty_cross_entropy, masked, t, 0.5)
    theirs = value_and_grad(penalty_reference, x[:, :3], t, 0.5)  # 0·log 0 = 0: as if the classes were absent
    assert_close(ours[0], theirs[0])
    assert_close(ours[1][:, :3], theirs[1])
    assert not ours[1][:, 3:].any()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_confidence_penalty_unbatched_and_empty(reduction):
    x, t, _ = make((3, 4))
    ours = value_and_grad(confidence_penalty_cross_entropy, x[1], t[1], 0.3, reduction=reduction)
    one = value_and_grad(confidence_penalty_cross_entropy, x[1:2], t[1:2], 0.3, reduction=reduction)
    assert ours[0].shape == () and one[0].shape == ((1,) if reduction == "none" else ())
    assert_close(ours, (one[0].reshape(()), one[1][0]))
    for x_, t_ in ((x[:0], t[:0]), (x, torch.full((3,), -100))):  # empty, fully ignored: 0, zero gradient
        loss, grad = value_and_grad(confidence_penalty_cross_entropy, x_, t_, 0.3)
        assert loss.item() == 0 and not grad.any()


def test_confidence_penalty_half_precision_is_computed_in_float32():
    x, t, _ = make((8, 300), dtype=torch.float32)
    loss, grad = value_and_grad(confidence_penalty_cross_entropy, x.bfloat16(), t, 0.1)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert_close(loss, penalty_reference(x.bfloat16().float(), t, 0.1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta=-0.1), r"beta=-0.1 is not allowed; beta must be finite and >= 0"),
        (dict(beta=math.nan), r"beta=nan is not allowed"),
        (dict(beta=math.inf), r"beta=inf is not allowed"),
        (dict(beta="high"), r"beta='high' must be a real number"),
        (dict(reduction="avg"), r"reduction='avg' is not supported"),
        (dict(weight=torch.ones(2, 2)), r"weight has shape \(2, 2\); expected \(K,\)"),
    ],
)
def test_confidence_penalty_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConfidencePenaltyCrossEntropy(**kwargs)


def test_confidence_penalty_bad_targets():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"takes class indices of an integer dtype, got torch.float32"):
        confidence_penalty_cross_entropy(x, torch.softmax(x, 1))
    for weight in (None, torch.ones(3)):
        with pytest.raises(ValueError, match=r"class index 3 at position \(2,\); class indices must be in \[0, 3\)"):
            confidence_penalty_cross_entropy(x, torch.tensor([0, 1, 3, 0]), weight=weight)


def test_docs_name_tests_that_exist():
    """docs/losses.md pins each behaviour to a test by name: every name it gives is a test in tests/."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"`(test_\w+)`", (root / "docs" / "losses.md").read_text()))
    tests = "".join(p.read_text() for p in (root / "tests").glob("test_*.py"))
    defined = set(re.findall(r"^def (test_\w+)", tests, re.M))
    assert named and named <= defined, sorted(named - defined)


# --- fastai compatibility -----------------------------------------------------------------------

def test_fastai_attributes_and_class_axis():
    """activation/decodes act on the class axis; fastai's own use the last axis (fastai#3603)."""
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    for ours in (LabelSmoothingCrossEntropy(), LabelSmoothingCrossEntropyFlat(axis=1), ConfidencePenaltyCrossEntropy()):
        assert ours.y_int is True
        assert_close(ours.activation(x), torch.softmax(x, 1))
        assert torch.equal(ours.decodes(x), x.argmax(1))
    for theirs in (FastaiLS(), FastaiLSFlat(axis=1)):
        assert_close(theirs.activation(x).sum(-1), torch.ones(2, 3, 4))  # the last axis
        assert not torch.allclose(theirs.activation(x).sum(1), torch.ones(2, 4, 5), atol=1e-2)
        assert theirs.decodes(x).shape == (2, 3, 4)  # not the (N, H, W) of the targets


def nondefault_losses():
    w = torch.tensor([1.0, 2.0, 0.5])
    return {
        "ce": LabelSmoothingCrossEntropy(0.2, w, "sum", ignore_index=1, spread="others"),
        "flat": LabelSmoothingCrossEntropyFlat(0.3, w, "none", axis=1, ignore_index=255, spread="others"),
        "bce": LabelSmoothingBCEWithLogits(0.2, w, "sum", pos_weight=torch.tensor([3.0, 1.0, 0.25]), thresh=0.3),
        "penalty": ConfidencePenaltyCrossEntropy(0.3, w, "sum", ignore_index=1),
    }


def nondefault_inputs(name):
    g = torch.Generator().manual_seed(0)
    if name in ("ce", "penalty"):
        return torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    if name == "flat":
        t = torch.randint(0, 3, (2, 4, 5), generator=g)
        t[0, 0, :2] = 255
        return torch.randn(2, 3, 4, 5, generator=g), t
    return torch.randn(6, 3, generator=g), torch.randint(0, 2, (6, 3), generator=g).float()


def torch_save_round_trip(obj):
    buf = BytesIO()
    torch.save(obj, buf)  # what Learner.export uses
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("round_trip", [lambda o: pickle.loads(pickle.dumps(o)), torch_save_round_trip],
                         ids=["pickle", "torch.save"])  # fmt: skip
@pytest.mark.parametrize("name", ["ce", "flat", "bce", "penalty"])
def test_loss_pickles_with_nondefault_settings(name, round_trip):
    lf = nondefault_losses()[name]
    clone = round_trip(lf)
    assert type(clone) is type(lf)
    for key in ("eps", "beta", "reduction", "ignore_index", "spread", "axis", "thresh", "y_int"):
        assert getattr(clone, key, None) == getattr(lf, key, None), key
    for key in ("weight", "pos_weight"):
        if getattr(lf, key, None) is not None:
            assert torch.equal(getattr(clone, key), getattr(lf, key)), key
    x, t = nondefault_inputs(name)
    assert_close(clone(x, t), lf(x, t), rtol=0, atol=0)
    assert torch.equal(clone.decodes(clone.activation(x)), lf.decodes(lf.activation(x)))


@pytest.mark.parametrize("name", ["ce", "flat", "bce", "penalty"])
def test_none_reduce_sets_and_restores_reduction(name):
    """fastai's NoneReduce (MixUp, CutMix, get_preds(with_loss=True)) sets `reduction` for a while."""
    lf = nondefault_losses()[name]
    lf.reduction = "sum"
    x, t = nondefault_inputs(name)
    total = lf(x, t)
    with NoneReduce(lf) as none_lf:
        assert none_lf is lf and lf.reduction == "none"
        per_item = none_lf(x, t)
    assert lf.reduction == "sum"
    # Flat: one loss per flattened item
    expected = {"ce": (6,), "flat": (2 * 4 * 5,), "bce": (6, 3), "penalty": (6,)}[name]
    assert per_item.shape == expected
    assert_close(per_item.sum(), total)
    with pytest.raises(RuntimeError), NoneReduce(lf):
        raise RuntimeError("inside the context")
    assert lf.reduction == "sum"


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

def test_reduce_loss():
    v = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    assert reduce_loss(v).item() == 3.0 and reduce_loss(v, "sum").item() == 9.0
    assert reduce_loss(v, "none") is v
    assert reduce_loss(v, "mean", torch.tensor(4.5)).item() == 2.0  # e.g. Σ w_y over the rows kept
    for empty, denom in ((v[:0], None), (v, torch.tensor(0.0))):
        loss = reduce_loss(empty, "mean", denom)
        (grad,) = torch.autograd.grad(loss, v)
        assert loss.item() == 0.0 and not grad.any() and not grad.isnan().any()
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
        (
            torch.randn(4),
            torch.tensor([0, 1, 1, 0]),
            r"target has shape \(4,\); unbatched logits of shape \(4,\) need a 0-d class index or probabilities",
        ),
        (torch.tensor(1.0), torch.tensor(0), r"logits must have shape \(K,\), \(N, K\) or .*got a 0-d tensor"),
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


@pytest.mark.parametrize("ignore_index", [-100, -1, 0, 2, 5, 255])  # below 0, inside [0, K), K and above
@pytest.mark.parametrize("shape", [(9, 5), (300, 300)], ids=["small", "fused size"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ignore_index_anywhere_with_and_without_ignored_rows(ignore_index, shape, reduction, path):
    """On the host the loss learns whether a row is ignored from one read when ignore_index lies outside
    [0, K), relying on nll_loss to refuse every other index out of range; checked on each side."""
    x, t, _ = make(shape)
    kw = dict(ignore_index=ignore_index, reduction=reduction)
    for ignored in (False, True):
        if ignored:
            t[::4] = ignore_index
        elif 0 <= ignore_index < shape[1]:
            t[t == ignore_index] = (ignore_index + 1) % shape[1]
        assert_close(
            value_and_grad(label_smoothing_cross_entropy, x, t, 0.1, **kw),
            value_and_grad(F.cross_entropy, x, t, label_smoothing=0.1, **kw),
        )


@pytest.mark.parametrize("bad", [-1, -100, 5, 300])
@pytest.mark.parametrize("shape", [(9, 5), (300, 300)], ids=["small", "fused size"])
@pytest.mark.parametrize(
    "route", ["plain", "some rows ignored", "weights", "none", "-inf logit", "N-d"]
)  # fmt: skip
def test_bad_class_index_is_named_on_every_host_route(bad, shape, route):
    """On the host nothing checks the range up front: nll_loss (or weight[t]) refuses the index and
    the loss turns that into a ValueError naming it, on every route the values can take."""
    x, t, _ = make(shape)
    kw = {"weights": dict(weight=torch.rand(shape[1]).double() + 0.5), "none": dict(reduction="none")}.get(route, {})
    if route == "-inf logit":
        x[0, 0] = -INF
    if route == "N-d":  # (N, K) -> (N/3, K, 3): position (1, 0) of the target is item 3
        x, t = x.reshape(-1, 3, shape[1]).transpose(1, 2), t.reshape(-1, 3)
    bad = bad if bad < 0 else bad if bad >= shape[1] else shape[1]
    t.view(-1)[3] = bad
    where = r"\(1, 0\)" if route == "N-d" else r"\(3,\)"
    for ignore_index in (-7, 255, 1):  # below 0, above K, inside [0, K): three ways of deciding
        if route == "some rows ignored":
            t.view(-1)[::4] = ignore_index
        message = rf"class index {bad} at position {where}.*\(or ignore_index={ignore_index}\)"
        with pytest.raises(ValueError, match=message) as error:
            label_smoothing_cross_entropy(x.requires_grad_(), t, 0.1, ignore_index=ignore_index, **kw)
        assert error.value.__suppress_context__  # one error in the traceback, not PyTorch's IndexError first


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
