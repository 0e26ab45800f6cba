"""Deployment-only code, beside the float models (torchvision's `models/quantization/` pattern): the model
files never know about backends, layouts or precisions; these passes recognise the float module types.

- `optimize(model, *, dtype=None, ...)`: the inference copy `atrous eval`/`predict` run (`pipeline.py`);
- `fold_batchnorm`: BatchNorm folded into its convolution (`fold.py`);
- `FusedBottleneck`, `FusedASPP` and their passes: oneDNN fused forms (`fused.py`);
- `prepare_training`, `to_channels_last`: channels_last for training and inference (`layout.py`);
- `Precision`, `with_precision`: bfloat16/float16 inference, the faster form measured (`precision.py`).
"""

from atrous.optimize.fold import fold_batchnorm
from atrous.optimize.fused import (
    FusedASPP,
    FusedBottleneck,
    fuse_aspp_for_inference,
    fuse_for_inference,
)
from atrous.optimize.layout import prepare_training, to_channels_last
from atrous.optimize.pipeline import optimize
from atrous.optimize.precision import PRECISIONS, Precision, resolve_dtype, with_precision

__all__ = [
    "PRECISIONS",
    "FusedASPP",
    "FusedBottleneck",
    "Precision",
    "fold_batchnorm",
    "fuse_aspp_for_inference",
    "fuse_for_inference",
    "optimize",
    "prepare_training",
    "resolve_dtype",
    "to_channels_last",
    "with_precision",
]
