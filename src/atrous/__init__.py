"""atrous: dense prediction with dilated (atrous) convolution.

The public API; the logic lives in the submodules.
"""

__version__ = "0.1.0"

from atrous.api import load, predict
from atrous.errors import AtrousError
from atrous.models import available, build, from_torchvision
from atrous.ops import (
    DUC,
    AtrousConv1d,
    AtrousConv2d,
    BilinearUpsample,
    DilatedReparam,
    SmoothedAtrousConv2d,
    atrous_conv2d,
)
from atrous.optimize import optimize

__all__ = [
    "DUC",
    "AtrousConv1d",
    "AtrousConv2d",
    "AtrousError",
    "BilinearUpsample",
    "DilatedReparam",
    "SmoothedAtrousConv2d",
    "__version__",
    "atrous_conv2d",
    "available",
    "build",
    "from_torchvision",
    "load",
    "optimize",
    "predict",
]
