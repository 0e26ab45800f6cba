"""Models of the dilation family: `build(name, num_classes, **options)`, `available()`, `describe(name)`.

See `atrous.models.zoo` for the registry and the builders, `atrous.models.backbones` for VGG-16, ResNet and
DRN, `atrous.models.heads` for the heads and `atrous.models.segmenter` for how they are composed.
"""

from atrous.errors import BadModelOption, ModelError, UnknownModel
from atrous.models.zoo import available, build, describe, from_torchvision, options

__all__ = [
    "BadModelOption",
    "ModelError",
    "UnknownModel",
    "available",
    "build",
    "describe",
    "from_torchvision",
    "options",
]
