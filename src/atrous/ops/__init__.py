"""Dilated ("atrous") convolution and the layers built from it.

- `conv`: `atrous_conv2d` / `AtrousConv2d` (native or space-to-batch, one padding formula, the automatic
  choice of implementation and layout), `AtrousConv1d`, `BilinearUpsample`, `DUC`, `SmoothedAtrousConv2d`.
- `reparam`: `DilatedReparam`, UniRepLKNet's dilated re-parameterisation (a large depthwise kernel trained
  beside dilated small ones, merged into one dense kernel for inference).
"""

from atrous.ops.conv import (
    DUC,
    IMPLS,
    LAYOUT_SWITCH_CHANNELS,
    LAYOUT_SWITCH_RATE,
    LAYOUT_SWITCH_RATE_NO_GRAD,
    SPACE_TO_BATCH_MAX_CHANNELS,
    SPACE_TO_BATCH_MIN_BLOCK,
    AtrousConv1d,
    AtrousConv2d,
    BilinearUpsample,
    SmoothedAtrousConv2d,
    atrous_conv2d,
    bilinear_kernel,
    check_rates,
    choose_impl,
    choose_layout,
    same_padding,
)
from atrous.ops.reparam import (
    UNIREPLKNET_BRANCHES,
    DilatedReparam,
    dilated_to_dense,
    fold_batchnorm,
    reparameterize,
)

__all__ = [
    "DUC",
    "IMPLS",
    "LAYOUT_SWITCH_CHANNELS",
    "LAYOUT_SWITCH_RATE",
    "LAYOUT_SWITCH_RATE_NO_GRAD",
    "SPACE_TO_BATCH_MAX_CHANNELS",
    "SPACE_TO_BATCH_MIN_BLOCK",
    "UNIREPLKNET_BRANCHES",
    "AtrousConv1d",
    "AtrousConv2d",
    "BilinearUpsample",
    "DilatedReparam",
    "SmoothedAtrousConv2d",
    "atrous_conv2d",
    "bilinear_kernel",
    "check_rates",
    "choose_impl",
    "choose_layout",
    "dilated_to_dense",
    "fold_batchnorm",
    "reparameterize",
    "same_padding",
]
