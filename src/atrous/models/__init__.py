"""Models of the dilation family: `build(name, num_classes, **options)`, `available()`, `describe(name)`.

See `atrous.models.zoo` for the registry and the builders, `atrous.models.backbones` for VGG-16, ResNet and
DRN, `atrous.models.heads` for the heads and `atrous.models.segmenter` for how they are composed. One paper
per file for the later answers to gridding: `denseaspp` (Yang et al. 2018), `wasp` (Artacho & Savakis
2019), `regseg` (Gao 2021); `backbones.reparam_stack` is `dilated_net(block="reparam")` (UniRepLKNet).
`build` raises `ModelError` (an `AtrousError` and a `ValueError`): `UnknownModel` or `BadModelOption`.
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
