"""Dilated ("atrous") convolution and the upsampling layers of the dilation family (re-exported by
`atrous.ops`).

- `atrous_conv2d` / `AtrousConv2d`: 2-D dilated convolution with symmetric "same" padding
  `dilation * (kernel_size - 1) // 2` (as torchvision's dilated ResNets), computed either natively
  (`F.conv2d(dilation=r)`) or by space-to-batch (TensorFlow's `atrous_conv2d`; Chen et al., DeepLab, 2016).
- `AtrousConv1d`: 1-D dilated convolution, centred or causal (WaveNet / TCN).
- `BilinearUpsample`: the FCN deconvolution initialised to the bilinear kernel (Long et al., 2015).
- `DUC`: dense upsampling convolution (Wang et al., "Understanding Convolution for Semantic Segmentation",
  WACV 2018).
- `SmoothedAtrousConv2d`: the two gridding fixes of Wang & Ji, "Smoothed Dilated Convolutions for Improved
  Dense Prediction", KDD 2018.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("native", "space_to_batch")


# ----------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------
def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_rates(rates, name: str = "rates") -> tuple[int, ...]:
    """`rates` as a tuple after checking it is a non-empty sequence of integers >= 1 (bools refused): the one
    check of a dilation-rate list, shared by the models' constructors and the coverage analysis; `name` is
    what the error calls it ("ASPP rates", "multi_grid", ...)."""
    rates = tuple(rates)
    if not rates or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates):
        raise ValueError(f"{name} must be a non-empty list of integers >= 1, got {rates!r}")
    return rates


def _check_odd_kernel(kernel_size) -> int:
    _check_int("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd for symmetric 'same' padding, got {kernel_size}: "
            "use an odd size (1, 3, 5, ...), or AtrousConv1d(causal=True) for even kernels"
        )
    return kernel_size


def same_padding(kernel_size: int, dilation: int) -> int:
    """The one padding formula: `dilation * (kernel_size - 1) // 2` on every side (odd kernels)."""
    return dilation * (kernel_size - 1) // 2


# ----------------------------------------------------------------------------------------------------------
# functional form
# ----------------------------------------------------------------------------------------------------------
def _live_taps(size: int, kernel_size: int, dilation: int) -> int:
    """Half-width (in taps) of the kernel part that can read a real pixel along one axis.

    With same padding, tap `i` (offset `(i - c) * dilation` from the centre `c`) reads only padding for
    every output position when `|i - c| * dilation >= size`. Those taps contribute exactly zero, so the
    kernel can be cropped to the live ones: large rates on small maps then cost what their valid taps
    cost (DeepLab v3's "the 3x3 filter degenerates to 1x1").
    """
    half = (kernel_size - 1) // 2
    return min(half, (size - 1) // dilation)


def _crop_dead_taps(x, weight, dilation):
    """The kernel cropped to the taps that can reach a real pixel of `x` (exact; see `_live_taps`)."""
    k_h, k_w = weight.shape[-2:]
    live_h = _live_taps(x.shape[-2], k_h, dilation)
    live_w = _live_taps(x.shape[-1], k_w, dilation)
    c_h, c_w = (k_h - 1) // 2, (k_w - 1) // 2
    if live_h < c_h or live_w < c_w:
        weight = weight[..., c_h - live_h : c_h + live_h + 1, c_w - live_w : c_w + live_w + 1]
    return weight, live_h, live_w


def _native(x, weight, bias, dilation, stride, groups):
    weight, live_h, live_w = _crop_dead_taps(x, weight, dilation)
    return F.conv2d(
        x,
        weight,
        bias,
        stride=stride,
        padding=(dilation * live_h, dilation * live_w),
        dilation=dilation,
        groups=groups,
    )


def _space_to_batch(x, weight, bias, dilation, stride, groups):
    r = dilation
    n, c, h, w = x.shape
    k_h, k_w = weight.shape[-2:]
    # zero-pad bottom/right up to a multiple of the rate: (N, C, hb * r, wb * r). Output pixel (i, j) lies
    # in phase (i % r, j % r) and reads only that phase, at block rows i // r + t - (k_h - 1) // 2: rows
    # below 0 or at/after hb are the dense conv's own zero padding, rows in [h, hb * r) the zeros added
    # here, so padding the r x r dense sub-images by (k - 1) // 2 is exact and no tap of the dense
    # convolution below runs on padding that the dilated one would have skipped.
    hb, wb = -(-h // r), -(-w // r)
    x = F.pad(x, (0, wb * r - w, 0, hb * r - h))
    # rate x rate dense sub-images, phase-major: (r*r*N, C, hb, wb)
    x = x.reshape(n, c, hb, r, wb, r).permute(3, 5, 0, 1, 2, 4).reshape(r * r * n, c, hb, wb)
    y = F.conv2d(x, weight, bias, padding=((k_h - 1) // 2, (k_w - 1) // 2), groups=groups)
    o = y.shape[1]  # y: (r*r*N, O, hb, wb)
    # interlace the phases back: (N, O, hb*r, wb*r), then crop to the input size and subsample
    y = y.reshape(r, r, n, o, hb, wb).permute(2, 3, 4, 0, 5, 1).reshape(n, o, hb * r, wb * r)
    return y[:, :, :h:stride, :w:stride]


def atrous_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    stride: int = 1,
    groups: int = 1,
    impl: str = "native",
) -> torch.Tensor:
    """Dilated 2-D convolution with symmetric padding `dilation * (k - 1) // 2`.

    Equals `F.conv2d(x, weight, bias, stride, padding=dilation * (k - 1) // 2, dilation=dilation,
    groups=groups)` for odd square or rectangular kernels. `impl` is "native" (F.conv2d; kernel taps that
    can only read padding for this input size are cropped away, which is exact) or "space_to_batch"
    (pad to a multiple of the rate, rearrange into rate x rate dense sub-images, one dense convolution,
    interlace back; stride > 1 is computed at stride 1 and subsampled). The output keeps the input's
    memory format.
    """
    _check_int("dilation", dilation, 1)
    _check_int("stride", stride, 1)
    _check_int("groups", groups, 1)
    if x.dim() != 4:
        raise ValueError(f"atrous_conv2d expects an (N, C, H, W) input, got shape {tuple(x.shape)}")
    for k in weight.shape[-2:]:
        _check_odd_kernel(int(k))
    if impl == "native" or (impl == "space_to_batch" and dilation == 1):
        return _native(x, weight, bias, dilation, stride, groups)
    if impl == "space_to_batch":
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        # the cropped kernel's "same" padding is dilation * live taps, which _space_to_batch derives
        weight = _crop_dead_taps(x, weight, dilation)[0]
        y = _space_to_batch(x, weight, bias, dilation, stride, groups)
        return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


# Crossovers of `impl="auto"` on the CPU (oneDNN), from benchmarks/conv.py and the README's "Performance"
# section. Forward only (no grad): channels_last inputs run the native kernel at every rate; NCHW inputs at
# rates >= 4 run faster converted to channels_last for the one convolution (quiet grid, 64 ch at 128^2:
# 1.22-1.39x dense against native's 1.39-1.66x; 256 ch at 64^2, rate 4: 1.08x against 1.31x), and so do
# wide NCHW layers at rates >= 8 when a gradient is recorded too. Forward+backward in NCHW:
# oneDNN's dilated backward is the slow path (quiet machine, 64 ch at 128^2: 1.6-2.9x the dense conv at
# rates 2-16), while space_to_batch runs dense kernels only (1.1-1.3x at rates 2-8, 1.5-1.75x at 12-16
# where the sub-images are 11x11 and 8x8), so narrow NCHW layers take it when a gradient is recorded; wide
# ones keep the layout switch above (space_to_batch and the switch measured within noise of each other
# there), and so do sub-images smaller than 8x8 (128 ch at 32^2, rate 8: 1.6x against native's 1.3x).
# space_to_batch stays out of channels_last (1.3-2.9x dense forward, slower than native in 28 of 30 cells)
# and of strided convolutions (it computes every output position, then subsamples).
LAYOUT_SWITCH_RATE = 8  # NCHW, rate >= this ...
LAYOUT_SWITCH_CHANNELS = 256  # ... and in_channels >= this: convert to channels_last for the convolution
LAYOUT_SWITCH_RATE_NO_GRAD = 4  # NCHW without autograd recording, rate >= this: the same conversion
SPACE_TO_BATCH_MAX_CHANNELS = 256  # NCHW with grad, stride 1, rate >= 2, in_channels below this ...
SPACE_TO_BATCH_MIN_BLOCK = 8  # ... and sub-images (ceil(H / rate) x ceil(W / rate)) at least this wide


def _is_nchw(x: torch.Tensor) -> bool:
    return x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)


def choose_impl(x: torch.Tensor, kernel_size: int, dilation: int, stride: int = 1) -> str:
    """The deterministic rule behind `impl="auto"`: the same (shape, rate, stride, layout, device, grad
    mode) always picks the same implementation, in every process, so training reproduces across restarts
    and DDP ranks (a per-process autotune would not). cuDNN runs dilation natively; on the CPU an NCHW
    input narrower than SPACE_TO_BATCH_MAX_CHANNELS, at rate >= 2 and stride 1, takes space_to_batch while
    autograd records (`torch.is_grad_enabled()`), unless its rate x rate sub-images would be smaller
    than SPACE_TO_BATCH_MIN_BLOCK on a side; see the crossovers above.
    """
    del kernel_size
    if (
        dilation >= 2
        and stride == 1
        and x.shape[1] < SPACE_TO_BATCH_MAX_CHANNELS
        and -(-min(x.shape[-2:]) // dilation) >= SPACE_TO_BATCH_MIN_BLOCK
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and _is_nchw(x)
    ):
        return "space_to_batch"
    return "native"


def choose_layout(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.memory_format | None:
    """The memory format `impl="auto"` runs the convolution in: None keeps the input's; channels_last
    means an NCHW input (and the weight) is converted for the convolution and the output converted back,
    where benchmarks/conv.py measured that the conversion costs less than the NCHW kernel's slow path
    (CPU: rate >= LAYOUT_SWITCH_RATE and in_channels >= LAYOUT_SWITCH_CHANNELS, or rate >=
    LAYOUT_SWITCH_RATE_NO_GRAD while autograd does not record). Deterministic.
    """
    del kernel_size
    if x.device.type != "cpu" or not _is_nchw(x):
        return None
    if dilation >= LAYOUT_SWITCH_RATE and x.shape[1] >= LAYOUT_SWITCH_CHANNELS:
        return torch.channels_last
    if dilation >= LAYOUT_SWITCH_RATE_NO_GRAD and not torch.is_grad_enabled():
        return torch.channels_last
    return None


# ----------------------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------------------
class AtrousConv2d(nn.Conv2d):
    """`nn.Conv2d` with symmetric "same" padding for any rate >= 1 and a choice of implementation.

    Same parameters and state_dict keys as `nn.Conv2d`, so standard checkpoints load. Arguments after
    `kernel_size` are keyword-only, so a positional call cannot silently take nn.Conv2d's order (where the
    fourth argument is the stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        impl: str = "auto",
    ) -> None:
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        _check_odd_kernel(kernel_size)
        _check_int("dilation", dilation, 1)
        _check_int("stride", stride, 1)
        if impl not in (*IMPLS, "auto"):
            raise ValueError(f"impl must be 'auto' or one of {IMPLS}, got {impl!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=same_padding(kernel_size, dilation),
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rate = self.dilation[0]
        if self.impl != "auto":
            return atrous_conv2d(x, self.weight, self.bias, rate, self.stride[0], self.groups, impl=self.impl)
        impl = choose_impl(x, self.kernel_size[0], rate, self.stride[0])
        layout = choose_layout(x, self.kernel_size[0], rate)
        if layout is None or x.is_contiguous(memory_format=layout):
            return atrous_conv2d(x, self.weight, self.bias, rate, self.stride[0], self.groups, impl=impl)
        # (N, C, H, W) NCHW -> channels_last for the convolution, back to the caller's layout afterwards
        y = atrous_conv2d(
            x.contiguous(memory_format=layout),
            self.weight.contiguous(memory_format=layout),
            self.bias,
            rate,
            self.stride[0],
            self.groups,
            impl=impl,
        )
        return y.contiguous()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl!r}"


class AtrousConv1d(nn.Conv1d):
    """1-D dilated convolution for sequences; output length equals input length (stride 1).

    `causal=True` pads `dilation * (kernel_size - 1)` on the left only (WaveNet / TCN), so output t sees
    inputs <= t; any kernel size >= 1 is allowed. Otherwise the padding is centred, which needs an odd kernel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        causal: bool = False,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        _check_int("dilation", dilation, 1)
        if causal:
            _check_int("kernel_size", kernel_size, 1)
        else:
            _check_odd_kernel(kernel_size)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            padding=0 if causal else same_padding(kernel_size, dilation),
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            x = F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0))
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", causal={self.causal}"


def bilinear_kernel(factor: int) -> torch.Tensor:
    """The (K, K) bilinear interpolation kernel of FCN's deconvolution, K = 2 * factor - factor % 2."""
    size = 2 * factor - factor % 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).float()


class BilinearUpsample(nn.ConvTranspose2d):
    """Upsampling by an integer `factor` as a grouped transposed convolution (one filter per channel)
    initialised to the exact bilinear kernel, as FCN's deconvolution layers.

    Output size is exactly `factor` times the input. At initialisation the output equals
    `F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)` away from the border.
    `learnable=False` freezes the kernel (DRN's fixed upsampling).
    """

    def __init__(self, channels: int, factor: int, learnable: bool = True) -> None:
        _check_int("channels", channels, 1)
        _check_int("factor", factor, 1)
        size = 2 * factor - factor % 2
        super().__init__(
            channels,
            channels,
            size,
            stride=factor,
            padding=(size - factor) // 2,
            groups=channels,
            bias=False,
        )
        self.factor = factor
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(factor).expand_as(self.weight))
        self.weight.requires_grad_(learnable)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, factor={self.factor}, learnable={self.weight.requires_grad}"


class DUC(nn.Module):
    """Dense upsampling convolution (Wang et al. 2018): a convolution to `num_classes * factor**2`
    channels, then a pixel shuffle that rearranges them into a `factor` times larger map of logits.
    Unlike bilinear upsampling, every output sub-pixel has its own learned filter.
    """

    def __init__(self, in_channels: int, num_classes: int, factor: int, kernel_size: int = 3) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("num_classes", num_classes, 1)
        _check_int("factor", factor, 1)
        _check_odd_kernel(kernel_size)
        self.factor = factor
        self.conv = nn.Conv2d(
            in_channels, num_classes * factor * factor, kernel_size, padding=kernel_size // 2
        )
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))  # (N, C*f*f, h, w) -> (N, C, h*f, w*f)


def _to_phases(y: torch.Tensor, r: int) -> tuple[torch.Tensor, int, int]:
    """(N, C, H, W) -> (N, r*r, C, H', W'): the r x r interleaved sub-images (zero-padded to a multiple)."""
    n, c, h, w = y.shape
    hb, wb = -(-h // r), -(-w // r)
    y = F.pad(y, (0, wb * r - w, 0, hb * r - h))
    return y.reshape(n, c, hb, r, wb, r).permute(0, 3, 5, 1, 2, 4).reshape(n, r * r, c, hb, wb), h, w


def _from_phases(y: torch.Tensor, r: int, h: int, w: int) -> torch.Tensor:
    n, _, c, hb, wb = y.shape
    y = y.reshape(n, r, r, c, hb, wb).permute(0, 3, 4, 1, 5, 2).reshape(n, c, hb * r, wb * r)
    return y[:, :, :h, :w]


class SmoothedAtrousConv2d(nn.Module):
    """A dilated convolution with one of Wang & Ji's (KDD 2018) gridding fixes.

    - `method="shared_separable"`: before the dilated convolution, one (2r-1) x (2r-1) filter shared by all
      channels (a separable, channel-shared convolution) mixes each pixel with its neighbours, so the
      otherwise independent space-to-batch groups see each other. Initialised to a delta.
    - `method="group_interaction"`: after the dilated convolution, the r*r interleaved output groups are
      mixed by a learnable (r*r) x (r*r) matrix. Initialised to the identity.

    At initialisation both equal the plain dilated convolution `self.conv`.
    """

    METHODS = ("shared_separable", "group_interaction")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dilation: int,
        method: str = "shared_separable",
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        self.method = method
        self.conv = AtrousConv2d(
            in_channels, out_channels, kernel_size, dilation=dilation, groups=groups, bias=bias
        )
        r = dilation
        if method == "shared_separable":
            s = 2 * r - 1
            delta = torch.zeros(1, 1, s, s)
            delta[0, 0, r - 1, r - 1] = 1.0
            self.smooth = nn.Parameter(delta)
        else:
            self.mix = nn.Parameter(torch.eye(r * r))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv.dilation[0]
        if self.method == "shared_separable":
            n, c, h, w = x.shape
            x = F.conv2d(x.reshape(n * c, 1, h, w), self.smooth, padding=r - 1).reshape(n, c, h, w)
            return self.conv(x)
        y = self.conv(x)
        phases, h, w = _to_phases(y, r)  # (N, r*r, C, H', W')
        phases = torch.einsum("ji,nichw->njchw", self.mix, phases)
        return _from_phases(phases, r, h, w)
