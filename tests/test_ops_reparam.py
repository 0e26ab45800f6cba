"""DilatedReparam (UniRepLKNet's dilated re-parameterisation) against independent computations: the merged
convolution against the training-form block, and the merged kernel against F.conv2d of every branch with
its BatchNorm folded by hand, summed."""

import pytest
import torch
import torch.nn.functional as F

from atrous.ops import UNIREPLKNET_BRANCHES, DilatedReparam, dilated_to_dense, fold_batchnorm


def _randomised(block: DilatedReparam, seed: int) -> DilatedReparam:
    """Random weights and BatchNorm statistics (default ones would make every BN an identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for bn in [block.large_bn, *block.dilated_bns]:
            bn.running_mean.copy_(
                torch.randn(bn.running_mean.shape, generator=g, dtype=bn.running_mean.dtype)
            )
            bn.running_var.copy_(
                torch.rand(bn.running_var.shape, generator=g, dtype=bn.running_var.dtype) + 0.5
            )
    return block.eval()


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("kernel_size", [13, 5, 17])
def test_merged_equals_training_form_in_eval(dtype, tol, kernel_size):
    torch.manual_seed(0)
    block = DilatedReparam(6, kernel_size, branches=UNIREPLKNET_BRANCHES[kernel_size]).to(dtype)
    block = _randomised(block, seed=kernel_size)
    x = torch.randn(2, 6, 23, 19, dtype=dtype)  # odd, smaller than some branches' span at the border
    merged = block.reparameterize()
    assert isinstance(merged, torch.nn.Conv2d) and merged.weight.dtype == dtype
    assert (
        merged.kernel_size == (kernel_size, kernel_size) and merged.groups == 6 and merged.dilation == (1, 1)
    )
    with torch.no_grad():
        expected, got = block(x), merged(x)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= tol * scale, float((got - expected).abs().max() / scale)


def test_merged_kernel_equals_branches_by_f_conv2d():
    """Independent: each branch's BN folded by hand, the impulse response of the sum of F.conv2d calls at
    the branch's own rate; a cross-correlation's impulse response is the kernel flipped."""
    block = _randomised(DilatedReparam(3).double(), seed=1)  # the paper's k=13 block
    weight, bias = block.merged_kernel()
    k = 13
    delta = torch.zeros(1, 3, k, k, dtype=torch.float64)
    delta[..., k // 2, k // 2] = 1.0
    response = torch.zeros_like(delta)
    expected_bias = torch.zeros(3, dtype=torch.float64)
    convs = [(block.large.weight, 1, block.large_bn)]
    convs += [(c.weight, r, bn) for (_, r), c, bn in zip(block.branches, block.dilated, block.dilated_bns)]
    with torch.no_grad():
        for w, rate, bn in convs:
            s = bn.weight / (bn.running_var + bn.eps).sqrt()
            pad = rate * (w.shape[-1] - 1) // 2
            response += F.conv2d(delta, w * s[:, None, None, None], dilation=rate, padding=pad, groups=3)
            expected_bias += bn.bias - bn.running_mean * s
    torch.testing.assert_close(weight[:, 0], response[0].flip(-1, -2), rtol=0, atol=1e-12)
    torch.testing.assert_close(bias, expected_bias, rtol=0, atol=1e-12)
    # the paper's branches: (5,1) (7,2) (3,3) (3,4) (3,5); the merged kernel is dense (no holes) ...
    assert block.branches == ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5))
    assert (weight != 0).all()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batchnorm_equals_conv_then_batchnorm(affine, with_bias):
    # The one folding formula (DilatedReparam's merge and atrous.optimize's model pass) against the two
    # modules run one after the other in eval mode, in float64.
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=with_bias).double()
    bn = torch.nn.BatchNorm2d(5, affine=affine).double().eval()
    with torch.no_grad():
        for t in [*conv.parameters(), *bn.parameters(), bn.running_mean]:
            t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
        bn.running_var.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.5)
        x = torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64)
        weight, bias = fold_batchnorm(conv.weight, bn, conv.bias)
        torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_dilated_to_dense_by_hand():
    w = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    dense = dilated_to_dense(w, 2)
    expected = torch.tensor(
        [
            [1, 0, 2, 0, 3],
            [0, 0, 0, 0, 0],
            [4, 0, 5, 0, 6],
            [0, 0, 0, 0, 0],
            [7, 0, 8, 0, 9],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(dense[0, 0], expected)
    x = torch.randn(1, 1, 11, 9)
    torch.testing.assert_close(F.conv2d(x, dense, padding=2), F.conv2d(x, w, dilation=2, padding=2))


def test_training_form_is_the_sum_of_its_branches():
    """Train mode (batch statistics): the block is the large branch plus every dilated one, each through
    F.conv2d and F.batch_norm with batch statistics."""
    block = DilatedReparam(4, 7, branches=UNIREPLKNET_BRANCHES[7]).double().train()
    x = torch.randn(3, 4, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        ref = F.batch_norm(F.conv2d(x, block.large.weight, padding=3, groups=4), None, None, training=True)
        for (k, r), conv in zip(block.branches, block.dilated):
            y = F.conv2d(x, conv.weight, dilation=r, padding=r * (k - 1) // 2, groups=4)
            ref = ref + F.batch_norm(y, None, None, training=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    block(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 12}, "odd"),
        ({"kernel_size": 9, "branches": ((3, 5),)}, "spans 11 pixels, more than kernel_size 9"),
        ({"branches": ((3, 0),)}, "rate"),
        ({"branches": ((3,),)}, "pairs"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DilatedReparam(4, **kwargs)
