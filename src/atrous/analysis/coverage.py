"""Gridding: which input pixels reach one output pixel, and by how many paths; the HDC rate rules.

P. Wang, P. Chen, Y. Yuan, D. Liu, Z. Huang, X. Hou, G. Cottrell, "Understanding Convolution for Semantic
Segmentation", WACV 2018, section 3.2 (hybrid dilated convolution, HDC): a stack of dilated convolutions
whose rates share a factor (2, 2, 2) sees the input through a checkerboard ("gridding"); the rates of a
group must have no common factor and satisfy `M_2 <= K` for the recurrence
`M_n = r_n, M_i = max[M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i]` (K: kernel size). The recurrence
alone accepts some lists that still leave holes, so `hdc_check` also counts the paths exactly.

- `coverage(rates, kernel_size)`: exact path counts (Python ints) for a stack of k x k convolutions at the
  given rates; holes inside the receptive field's box, the gridding ratio and the spread of path counts
  (max / min over covered pixels: an exponential schedule can cover every pixel yet weight them unevenly).
- `coverage_model(model, input_size)`: the same for any model, in float64 (counts overflow integers).
- `coverage_reparam(kernel_size, branches)`: exact tap counts of a UniRepLKNet dilated re-parameterisation
  block (Ding et al., CVPR 2024): the union of its branches' taps; `merge_reparam(model)`: the model with
  every such block merged into its one dense kernel (which has no holes), for `coverage_model`.
- `hdc_check(rates, kernel_size)`, `hdc_plan(kernel_size, layers, max_rate)`.
"""

from __future__ import annotations

import copy
import math
from itertools import product

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from atrous.ops import check_rates


def _check_kernel(kernel_size) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (centred taps), got {kernel_size}")
    return kernel_size


def path_profile(rates, kernel_size: int = 3) -> list[int]:
    """Number of paths from each input position to one output along one axis (exact integers).

    A stack of k x k convolutions is separable: the 2-D count at (y, x) is `profile[y] * profile[x]`.
    """
    rates, k = check_rates(rates), _check_kernel(kernel_size)
    counts = [1]
    for r in rates:
        new = [0] * (len(counts) + (k - 1) * r)
        for t in range(k):  # tap t shifts the previous counts by t * r
            for i, c in enumerate(counts):
                new[i + t * r] += c
        counts = new
    return counts


def _summary(grid_nonzero: int, box: int, values_min, values_max) -> dict:
    holes = box - grid_nonzero
    return {
        "holes": holes,
        "gridding_ratio": holes / box,
        "spread": float(values_max / values_min) if values_min else None,
        "max_paths": values_max,
        "min_paths": values_min,
    }


def coverage(rates, kernel_size: int = 3) -> dict:
    """Coverage map of a stack of `kernel_size` x `kernel_size` convolutions with the given `rates`.

    Returns `rates`, `kernel_size`, `rf` [h, w], `coverage` (the 2-D list of exact path counts from each
    input pixel of the receptive field's box to the centre output pixel), `holes` (box pixels no path
    reaches), `gridding_ratio` (holes / box area), `spread` (max / min count over covered pixels),
    `max_paths`, `min_paths`.
    """
    profile = path_profile(rates, kernel_size)
    n = len(profile)
    grid = [[a * b for b in profile] for a in profile]
    covered = [c for c in profile if c]
    lo, hi = min(covered), max(covered)
    return {
        "rates": list(rates),
        "kernel_size": kernel_size,
        "rf": [n, n],
        "coverage": grid,
        **_summary(len(covered) ** 2, n * n, lo * lo, hi * hi),
    }


# ----------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------
_IDENTITY = {F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardtanh, F.hardswish, F.mish}
_IDENTITY |= {F.dropout, F.dropout2d, F.batch_norm, F.group_norm, F.instance_norm, F.layer_norm}
_IDENTITY |= {torch.relu, torch.sigmoid, F.sigmoid, torch.tanh}


class _Linearise(TorchFunctionMode):
    """Nonlinearities and normalisations -> identity; max pooling -> sum pooling over the same window;
    global pooling -> zero unless `global_paths` (it would cover everything with weight 1/(H W))."""

    def __init__(self, global_paths: bool) -> None:
        super().__init__()
        self.global_paths = global_paths

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _IDENTITY or getattr(func, "__name__", "") in ("relu_", "sigmoid_", "tanh_"):
            return args[0]
        if func in (torch.conv2d, F.conv_transpose2d, F.linear):
            # every tap weighs 1 / (input channels per group), whatever the module holding the weight
            args = list(args)
            weight = args[1] if len(args) > 1 else kwargs.pop("weight")
            groups = kwargs.get("groups", args[6] if func is F.conv_transpose2d and len(args) > 6 else None)
            if groups is None and func is torch.conv2d:
                groups = args[6] if len(args) > 6 else 1
            fan = weight.shape[0] // (groups or 1) if func is F.conv_transpose2d else weight.shape[1]
            ones = torch.full_like(weight, 1.0 / fan)
            args = [args[0], ones, None, *args[3:]]
            kwargs.pop("bias", None)
            return func(*args, **kwargs)
        if func is F.max_pool2d:
            k = args[1] if len(args) > 1 else kwargs["kernel_size"]
            stride = args[2] if len(args) > 2 else kwargs.get("stride")
            padding = args[3] if len(args) > 3 else kwargs.get("padding", 0)
            ceil = kwargs.get("ceil_mode", args[5] if len(args) > 5 else False)
            return F.avg_pool2d(args[0], k, stride, padding, ceil, True, 1)  # divisor 1: a sum
        if func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            out = F.adaptive_avg_pool2d(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
            if tuple(out.shape[-2:]) == (1, 1) and not self.global_paths:
                return out * 0.0
            return out
        out = func(*args, **kwargs)
        if (
            not self.global_paths
            and getattr(func, "__name__", "") in ("mean", "sum", "amax", "nanmean")
            and isinstance(args[0], torch.Tensor)
            and args[0].dim() == 4
            and tuple(args[0].shape[-2:]) != (1, 1)
            and (out.dim() < 4 or tuple(out.shape[-2:]) == (1, 1))
        ):
            return out * 0.0  # a spatial reduction (x.mean((2, 3))) is global pooling too
        return out


def coverage_model(
    model: nn.Module, input_size=(129, 129), *, point=None, global_paths: bool = False
) -> dict:
    """Coverage map of any model: the path-weighted count from each input pixel to output pixel `point`
    (default: the centre), in float64.

    It is the input gradient of that output in a linearised copy: every convolution tap (any `F.conv2d`,
    `F.conv_transpose2d` or `F.linear` call, whichever module holds the weight) weighs 1 divided by its
    input channels per group (so channel sums do not multiply the counts, and a count is a number of
    spatial paths), biases 0, normalisations and activations are the identity (with positive weights the
    network is linear anyway), max pooling sums its window, bilinear interpolation keeps its weights (so
    counts become fractional) and global pooling is dropped unless `global_paths` (it would cover every
    pixel with weight 1/(H W) and hide the local gridding). Returns the keys of `coverage` for the box of
    reached pixels (`box`: [top, left, bottom, right]), and `coverage` as the full (H, W) map.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
    m = copy.deepcopy(model).double().eval()
    in_channels = next((mod.in_channels for mod in m.modules() if isinstance(mod, nn.Conv2d)), 3)
    x = torch.ones(1, in_channels, h, w, dtype=torch.float64, requires_grad=True)
    with _Linearise(global_paths):
        y = m(x)
    if isinstance(y, dict):
        y = y["out"]
    elif isinstance(y, (tuple, list)):
        y = y[0]
    py, px = point if point is not None else (y.shape[-2] // 2, y.shape[-1] // 2)
    y[0, 0, py, px].backward()
    grid = x.grad[0].sum(0)  # (H, W) float64
    reached = grid != 0
    if not reached.any():
        raise ValueError("no input pixel reaches that output pixel")
    rows = reached.any(1).nonzero().flatten()
    cols = reached.any(0).nonzero().flatten()
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    box = grid[top : bottom + 1, left : right + 1]
    covered = box[box != 0].abs()
    return {
        "input_size": [h, w],
        "point": [int(py), int(px)],
        "rf": [bottom - top + 1, right - left + 1],
        "box": [top, left, bottom, right],
        "coverage": grid.tolist(),
        **_summary(int((box != 0).sum()), box.numel(), float(covered.min()), float(covered.max())),
    }


# ----------------------------------------------------------------------------------------------------------
# dilated re-parameterisation (UniRepLKNet, Ding et al., CVPR 2024)
# ----------------------------------------------------------------------------------------------------------
def coverage_reparam(kernel_size: int = 13, branches=None, *, large: bool = True) -> dict:
    """Exact tap counts of one `DilatedReparam` block: how many of its branches read each tap of the merged
    `kernel_size` x `kernel_size` kernel (a (k, r) branch reads k x k taps r apart, centred).

    With `large` the dense large kernel counts once on every tap (the training form: no hole, the branches
    add weight where they read); without it, the dilated branches alone, whose union of taps can leave holes
    (a tap no single branch reads on both axes, e.g. (1, 6) for the k=13 block: only the 5x5 reads offset 1,
    only the 7x7 at rate 2 reads offset 6). `branches` defaults to UniRepLKNet's for `kernel_size`. Returns
    `kernel_size`, `branches`, `large`, `rf` (the box of read taps), `coverage` (K x K counts) and the keys
    of `coverage` (holes inside the box, gridding ratio, spread).
    """
    from atrous.ops import UNIREPLKNET_BRANCHES

    k_large = _check_kernel(kernel_size)
    if branches is None:
        if k_large not in UNIREPLKNET_BRANCHES:
            raise ValueError(
                f"UniRepLKNet gives branches for kernel sizes {sorted(UNIREPLKNET_BRANCHES)}, not "
                f"{k_large}: pass branches=((kernel, rate), ...)"
            )
        branches = UNIREPLKNET_BRANCHES[k_large]
    branches = tuple((_check_kernel(k), check_rates([r])[0]) for k, r in branches)
    c = k_large // 2
    grid = [[int(large)] * k_large for _ in range(k_large)]
    for k, r in branches:
        if r * (k - 1) + 1 > k_large:
            raise ValueError(f"branch (kernel {k}, rate {r}) is wider than the {k_large}x{k_large} kernel")
        offsets = [c + (t - k // 2) * r for t in range(k)]
        for y in offsets:
            for x in offsets:
                grid[y][x] += 1
    read = [i for i in range(k_large) if any(grid[i]) or any(row[i] for row in grid)]
    lo, hi = min(read), max(read)
    box = [row[lo : hi + 1] for row in grid[lo : hi + 1]]
    values = [v for row in box for v in row if v]
    return {
        "kernel_size": k_large,
        "branches": [list(b) for b in branches],
        "large": large,
        "rf": [hi - lo + 1, hi - lo + 1],
        "coverage": grid,
        **_summary(len(values), len(box) ** 2, min(values), max(values)),
    }


def merge_reparam(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every `DilatedReparam` replaced by its merged convolution
    (`reparameterize()`): the inference form, to analyse beside the training form."""
    from atrous.ops import DilatedReparam, reparameterize

    m = copy.deepcopy(model).eval()
    if isinstance(m, DilatedReparam):
        return m.reparameterize()
    reparameterize(m)  # the one merge (ops), also used by atrous.optimize and atrous export
    return m


# ----------------------------------------------------------------------------------------------------------
# HDC
# ----------------------------------------------------------------------------------------------------------
def hdc_recurrence(rates) -> list[int]:
    """[M_1 .. M_n] of Wang et al. (M_n = r_n, backwards); M_1 is included for completeness."""
    rates = check_rates(rates)
    m = [0] * len(rates)
    m[-1] = rates[-1]
    for i in range(len(rates) - 2, -1, -1):
        nxt = m[i + 1]
        m[i] = max(nxt - 2 * rates[i], nxt - 2 * (nxt - rates[i]), rates[i])
    return m


def hdc_check(rates, kernel_size: int = 3) -> dict:
    """Check a rate list against the HDC rules; `valid` only when all hold, `reasons` say which fail.

    Rules: the recurrence (`M_2 <= K`, for lists of 2 or more), no common factor greater than 1, and no
    hole in the exact coverage of a stack of K x K convolutions at these rates.
    """
    rates, k = check_rates(rates), _check_kernel(kernel_size)
    reasons = []
    m = hdc_recurrence(rates)
    m2 = m[1] if len(rates) >= 2 else None
    if m2 is not None and m2 > k:
        reasons.append(f"M_2 = {m2} > K = {k}: the top layers' taps are too far apart (M = {m})")
    g = math.gcd(*rates)
    if g > 1:
        reasons.append(f"the rates share the factor {g}: only every {g}-th pixel is ever seen")
    cov = coverage(rates, k)
    if cov["holes"]:
        profile = path_profile(rates, k)
        gaps = [i - len(profile) // 2 for i, c in enumerate(profile) if c == 0]
        reasons.append(
            f"{cov['holes']} of {cov['rf'][0] ** 2} pixels in the {cov['rf'][0]}x{cov['rf'][1]} receptive field "
            f"are never reached (offsets {gaps[:8]}{' ...' if len(gaps) > 8 else ''} along each axis)"
        )
    return {
        "rates": list(rates),
        "kernel_size": k,
        "valid": not reasons,
        "recurrence": {"M": m, "M_2": m2, "ok": m2 is None or m2 <= k},
        "common_factor": g,
        "holes": cov["holes"],
        "rf": cov["rf"],
        "spread": cov["spread"],
        "reasons": reasons,
    }


def hdc_plan(
    kernel_size: int = 3, layers: int = 3, max_rate: int = 9, *, limit: int | None = None
) -> list[dict]:
    """Every valid rate list of `layers` rates in 1..`max_rate`, ranked by receptive field (largest first),
    then by evenness of coverage (smallest spread of path counts first), then by the rates.

    Each entry: rates, rf, spread, M_2. The search is exhaustive (max_rate ** layers lists).
    """
    k = _check_kernel(kernel_size)
    for name, value in (("layers", layers), ("max_rate", max_rate)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if max_rate**layers > 2_000_000:
        raise ValueError(
            f"{max_rate}^{layers} rate lists is too many to search: lower --layers or --max-rate"
        )
    found = []
    for rates in product(range(1, max_rate + 1), repeat=layers):
        check = hdc_check(rates, k)
        if check["valid"]:
            found.append(
                {
                    "rates": list(rates),
                    "rf": check["rf"],
                    "spread": check["spread"],
                    "M_2": check["recurrence"]["M_2"],
                }
            )
    found.sort(key=lambda e: (-e["rf"][0], e["spread"], e["rates"]))
    return found[:limit] if limit is not None else found
