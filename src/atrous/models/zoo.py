"""Named model builders and the plain dict registry behind `atrous.models.build`.

Each builder is a keyword-only function with typed arguments; `build` checks the name and the option names
in one place and records `build_args` so that a checkpoint can rebuild the model.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from atrous.errors import BadModelOption, UnknownModel
from atrous.models._build import RESNETS
from atrous.models._build import check_choice as _check_choice
from atrous.models._build import resnet_backbone as _resnet
from atrous.models.backbones import check_width, scaled
from atrous.models.backbones.dilated_stack import DilatedStack
from atrous.models.backbones.drn import ARCHS as DRN_ARCHS
from atrous.models.backbones.drn import DRN
from atrous.models.backbones.reparam_stack import ReparamStack, matched_channels
from atrous.models.backbones.vgg import VGG16
from atrous.models.context import ContextModule
from atrous.models.denseaspp import denseaspp
from atrous.models.heads import (
    DEEPLAB_HEADS,
    ClassifierHead,
    DeepLabV3Head,
    DeepLabV3PlusHead,
    DUCHead,
    FCNHead,
    FCNSkipHead,
    RefinedHead,
    aspp_rates,
)
from atrous.models.poolnet import poolnet
from atrous.models.regseg import regseg
from atrous.models.segmenter import Crop, DeconvUpsample, Segmenter
from atrous.models.wasp import wasp

HDC_LAYER3 = (1, 2, 5, 9)  # absolute rates cycled over res4 (torchvision's layer3), TuSimple-DUC
HDC_LAYER4 = (5, 9, 17)  # and over res5 (layer4)
BLOCKS = ("plain", "reparam")  # dilated_net's layers: 3x3 dilated conv, or DilatedReparam + 1x1


# ----------------------------------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------------------------------
def _aux_head(backbone: nn.Module, num_classes: int, aux: bool) -> FCNHead | None:
    """torchvision's auxiliary head: an FCNHead on layer3."""
    if not aux:
        return None
    return FCNHead(
        in_channels=backbone.feature_info["layer3"].channels, num_classes=num_classes, feature="layer3"
    )


def _classifier(backbone: nn.Module, feature: str, num_classes: int) -> ClassifierHead:
    """A 1x1 classifier on the backbone's feature `feature`, its channels read from the declaration."""
    return ClassifierHead(
        in_channels=backbone.feature_info[feature].channels, num_classes=num_classes, feature=feature
    )


# ----------------------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------------------
def dilated_net(
    *,
    num_classes: int,
    rates: Sequence[int] = (1, 2, 5, 1, 2, 5),
    channels: int = 64,
    norm: str = "batch",
    block: str = "plain",
    width: float = 1.0,
) -> Segmenter:
    """Stack of 3x3 convs at the given `rates` (full resolution, `channels * width` wide) + 1x1 classifier.

    `block="reparam"`: each rate-r layer is instead a UniRepLKNet `DilatedReparam` with a (2r+1)-wide large
    kernel (the plain layer's field, dense) + a 1x1 conv, as wide as gives the plain stack's parameter count
    (`matched_channels`: 64 -> 146 channels, 189,124 against 188,181 parameters at 21 classes)."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    _check_choice("block", block, BLOCKS)
    channels = scaled(channels, check_width(width))
    if block == "plain":
        backbone = DilatedStack(rates=rates, channels=channels, norm=norm)
    else:
        if norm != "batch":
            raise ValueError(
                f"block='reparam' needs norm='batch' (each branch has its BatchNorm), got {norm!r}"
            )
        wide = matched_channels(tuple(rates), channels, num_classes=num_classes)
        backbone = ReparamStack(rates=rates, channels=wide)
    head = _classifier(backbone, "out", num_classes)
    return Segmenter(backbone=backbone, head=head, output_stride=1)


def deeplabv3(
    *,
    num_classes: int,
    backbone: str = "resnet101",
    output_stride: int = 16,
    rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = (1, 2, 4),
    aspp_channels: int | None = None,
    head: str = "paper",
    aux: bool = False,
    width: float = 1.0,
    pretrained_backbone: str | None = None,
) -> Segmenter:
    """DeepLab v3: dilated ResNet (multi-grid in layer4) + ASPP with image pooling; ASPP `rates` default to
    (6, 12, 18) at output stride 16 and (12, 24, 36) at 8; `aspp_channels` defaults to 256 * width."""
    _check_choice("output_stride", output_stride, (8, 16, 32))
    _check_choice("head", head, DEEPLAB_HEADS)
    net = _resnet(
        backbone,
        output_stride=output_stride,
        width=width,
        pretrained_backbone=pretrained_backbone,
        multi_grid=multi_grid,
    )
    head_module = DeepLabV3Head(
        in_channels=net.feature_info["layer4"].channels,
        num_classes=num_classes,
        feature="layer4",
        rates=aspp_rates(output_stride) if rates is None else tuple(rates),
        aspp_channels=scaled(256, width) if aspp_channels is None else aspp_channels,
        head=head,
    )
    return Segmenter(
        backbone=net, head=head_module, aux_head=_aux_head(net, num_classes, aux), output_stride=output_stride
    )


def deeplabv3plus(
    *,
    num_classes: int,
    backbone: str = "resnet101",
    output_stride: int = 16,
    rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = None,
    aspp_channels: int | None = None,
    aux: bool = False,
    width: float = 1.0,
    pretrained_backbone: str | None = None,
) -> Segmenter:
    """DeepLab v3+: the v3 encoder (output stride 16 by default) + decoder on layer1 (48-channel low-level
    projection, two 3x3 convs); logits at stride 4, upsampled bilinearly."""
    _check_choice("output_stride", output_stride, (8, 16))
    net = _resnet(
        backbone,
        output_stride=output_stride,
        width=width,
        pretrained_backbone=pretrained_backbone,
        multi_grid=multi_grid,
    )
    head = DeepLabV3PlusHead(
        in_channels=net.feature_info["layer4"].channels,
        low_level_channels=net.feature_info["layer1"].channels,
        num_classes=num_classes,
        feature="layer4",
        low_level_feature="layer1",
        rates=aspp_rates(output_stride) if rates is None else tuple(rates),
        aspp_channels=scaled(256, width) if aspp_channels is None else aspp_channels,
        low_level_projection=scaled(48, width),
    )
    return Segmenter(
        backbone=net, head=head, aux_head=_aux_head(net, num_classes, aux), output_stride=output_stride
    )


def fcn_resnet(
    *,
    num_classes: int,
    backbone: str = "resnet50",
    output_stride: int = 8,
    aux: bool = False,
    width: float = 1.0,
    pretrained_backbone: str | None = None,
) -> Segmenter:
    """torchvision's "FCN": dilated ResNet (output stride 8) + FCNHead + bilinear upsampling."""
    _check_choice("output_stride", output_stride, (8, 16, 32))
    net = _resnet(backbone, output_stride=output_stride, width=width, pretrained_backbone=pretrained_backbone)
    head = FCNHead(in_channels=net.feature_info["layer4"].channels, num_classes=num_classes, feature="layer4")
    return Segmenter(
        backbone=net, head=head, aux_head=_aux_head(net, num_classes, aux), output_stride=output_stride
    )


def hdc_duc(
    *,
    num_classes: int,
    backbone: str = "resnet101",
    layer3_rates: Sequence[int] = HDC_LAYER3,
    layer4_rates: Sequence[int] = HDC_LAYER4,
    aux: bool = False,
    width: float = 1.0,
    pretrained_backbone: str | None = None,
) -> Segmenter:
    """HDC + DUC: ResNet at output stride 8 whose dilated stages use the hybrid dilated convolution schedule
    (absolute rates 1, 2, 5, 9 cycled in layer3 and 5, 9, 17 in layer4) + a dense upsampling convolution."""
    net = _resnet(
        backbone,
        output_stride=8,
        width=width,
        pretrained_backbone=pretrained_backbone,
        block_rates={"layer3": tuple(layer3_rates), "layer4": tuple(layer4_rates)},
    )
    head = DUCHead(
        in_channels=net.feature_info["layer4"].channels, num_classes=num_classes, feature="layer4", factor=8
    )
    return Segmenter(
        backbone=net, head=head, upsample=Crop(), aux_head=_aux_head(net, num_classes, aux), output_stride=8
    )


def _fcn(num_classes: int, backbone: str, width: float, pretrained_backbone, skips: int) -> Segmenter:
    """FCN-32s/16s/8s on VGG-16 (fc7, pool4, pool3) or a pooling ResNet at output stride 32 (layer4, 3, 2).

    Odd sizes without FCN's 100-pixel input padding: the Caffe FCN pads the input by 100 px so that fc6's
    unpadded 7x7 convolution fits any image, then crops every upsampled map at a computed offset (5, 9, 31
    pixels). Here every convolution is "same"-padded and pooling rounds up (ceil_mode), so the stride-s map
    has exactly ceil(H/s) rows and its pixel i is centred on input pixel s*i + (s-1)/2, which is where a
    bilinear deconvolution with padding (2f - f % 2 - f) // 2 puts it. Skips and final output are therefore
    aligned at offset 0, and only the bottom/right overhang (2*ceil(H/32) >= ceil(H/16), s*ceil(H/s) >= H)
    is cropped. No pixel is lost for odd H, W and no computation is spent on 100 px of padding.
    """
    if backbone == "vgg16":
        net = VGG16(width=width, pretrained=pretrained_backbone)
        names = ("fc7", "pool4", "pool3")
    elif backbone in RESNETS:
        net = _resnet(backbone, output_stride=32, width=width, pretrained_backbone=pretrained_backbone)
        names = ("layer4", "layer3", "layer2")
    else:
        raise ValueError(f"backbone must be one of {('vgg16', *RESNETS)}, got {backbone!r}")
    head = FCNSkipHead(
        feature_channels={n: net.feature_info[n].channels for n in names},
        num_classes=num_classes,
        feature=names[0],
        skips=names[1 : 1 + skips],
    )
    stride = net.feature_info[names[skips]].stride  # 32, 16 or 8
    # FCN's final upsampling is fixed to bilinear; the 2x fusion deconvolutions in the head are learned
    up = DeconvUpsample(num_classes, stride, learnable=False)
    return Segmenter(backbone=net, head=head, upsample=up, output_stride=stride)


def fcn32s(
    *, num_classes: int, backbone: str = "vgg16", width: float = 1.0, pretrained_backbone: str | None = None
) -> Segmenter:
    """FCN-32s: score fc7 (stride 32) and upsample 32x with a fixed bilinear deconvolution."""
    return _fcn(num_classes, backbone, width, pretrained_backbone, skips=0)


def fcn16s(
    *, num_classes: int, backbone: str = "vgg16", width: float = 1.0, pretrained_backbone: str | None = None
) -> Segmenter:
    """FCN-16s: fc7 scores upsampled 2x (learned) + pool4 scores, then 16x bilinear."""
    return _fcn(num_classes, backbone, width, pretrained_backbone, skips=1)


def fcn8s(
    *, num_classes: int, backbone: str = "vgg16", width: float = 1.0, pretrained_backbone: str | None = None
) -> Segmenter:
    """FCN-8s: FCN-16s's fusion, upsampled 2x again + pool3 scores, then 8x bilinear."""
    return _fcn(num_classes, backbone, width, pretrained_backbone, skips=2)


def frontend(*, num_classes: int, width: float = 1.0, pretrained_backbone: str | None = None) -> Segmenter:
    """Yu & Koltun's front-end: VGG-16 without pool4/pool5, conv5 at rate 2, fc6 at rate 4 (output stride 8),
    a 1x1 classifier, bilinear upsampling."""
    net = VGG16(dilated=True, width=width, pretrained=pretrained_backbone)
    head = _classifier(net, "fc7", num_classes)
    return Segmenter(backbone=net, head=head, output_stride=8)


def context(
    *,
    num_classes: int,
    context: str = "basic",
    width: float = 1.0,
    pretrained_backbone: str | None = None,
) -> Segmenter:
    """Front-end + the context module ("basic": C channels, "large": up to 32C) on its class scores."""
    net = VGG16(dilated=True, width=width, pretrained=pretrained_backbone)
    scores = _classifier(net, "fc7", num_classes)
    head = RefinedHead(scores, ContextModule(classes=num_classes, kind=context))
    return Segmenter(backbone=net, head=head, output_stride=8)


def _drn(arch_name: str, num_classes: int, width: float, pretrained_backbone) -> Segmenter:
    """DRN segmenter as fyu/drn's DRNSeg: trunk, 1x1 classifier on level 8, fixed 8x bilinear deconvolution."""
    arch, layers = DRN_ARCHS[arch_name]
    net = DRN(arch=arch, layers=layers, width=width, pretrained=pretrained_backbone)
    head = _classifier(net, "layer8", num_classes)
    return Segmenter(
        backbone=net, head=head, upsample=DeconvUpsample(num_classes, 8, learnable=False), output_stride=8
    )


def drn_c_26(*, num_classes: int, width: float = 1.0, pretrained_backbone: str | None = None) -> Segmenter:
    """DRN-C-26 segmenter."""
    return _drn("drn_c_26", num_classes, width, pretrained_backbone)


def drn_d_22(*, num_classes: int, width: float = 1.0, pretrained_backbone: str | None = None) -> Segmenter:
    """DRN-D-22 segmenter."""
    return _drn("drn_d_22", num_classes, width, pretrained_backbone)


def drn_d_38(*, num_classes: int, width: float = 1.0, pretrained_backbone: str | None = None) -> Segmenter:
    """DRN-D-38 segmenter."""
    return _drn("drn_d_38", num_classes, width, pretrained_backbone)


# ----------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    builder: Callable[..., Segmenter]
    description: str
    paper: str


MODELS: dict[str, Entry] = {
    "fcn32s": Entry(
        fcn32s,
        "FCN-32s: VGG-16 (or pooling ResNet) scores at stride 32, bilinear 32x",
        "Long et al. CVPR 2015",
    ),
    "fcn16s": Entry(
        fcn16s, "FCN-16s: FCN-32s + pool4 skip fused by a learned 2x deconvolution", "Long et al. CVPR 2015"
    ),
    "fcn8s": Entry(fcn8s, "FCN-8s: FCN-16s + pool3 skip, bilinear 8x", "Long et al. CVPR 2015"),
    "frontend": Entry(
        frontend,
        "Yu & Koltun front-end: VGG-16 without pool4/pool5, dilated conv5 (2) and fc6 (4), output stride 8",
        "Yu & Koltun ICLR 2016",
    ),
    "context": Entry(
        context,
        "front-end + context module (basic or large; rates 1,1,2,4,8,16,1; identity initialisation)",
        "Yu & Koltun ICLR 2016",
    ),
    "drn_c_26": Entry(
        drn_c_26,
        "DRN-C-26: dilated residual network, no max pooling, degridding levels 7-8",
        "Yu et al. CVPR 2017",
    ),
    "drn_d_22": Entry(
        drn_d_22,
        "DRN-D-22: DRN with conv stem levels and plain-conv degridding levels",
        "Yu et al. CVPR 2017",
    ),
    "drn_d_38": Entry(
        drn_d_38, "DRN-D-38: deeper DRN-D (3, 4, 6, 3 blocks in levels 3-6)", "Yu et al. CVPR 2017"
    ),
    "deeplabv3": Entry(
        deeplabv3,
        "DeepLab v3: dilated ResNet (output stride 16/8, multi-grid) + ASPP with image pooling",
        "Chen et al. 2017",
    ),
    "deeplabv3plus": Entry(
        deeplabv3plus,
        "DeepLab v3+: DeepLab v3 encoder at output stride 16 + decoder with 48-channel low-level skip",
        "Chen et al. ECCV 2018",
    ),
    "fcn_resnet": Entry(
        fcn_resnet,
        "torchvision's FCN: dilated ResNet at output stride 8 + FCNHead + bilinear upsampling",
        "torchvision (Long et al. 2015 head)",
    ),
    "hdc_duc": Entry(
        hdc_duc,
        "HDC + DUC: ResNet with hybrid dilation rates (1,2,5,9 / 5,9,17) + dense upsampling convolution",
        "Wang et al. WACV 2018",
    ),
    "dilated_net": Entry(
        dilated_net,
        "pooling-free stack of 3x3 dilated convs at full resolution, one per rate (gridding / HDC studies); "
        "block=reparam: a DilatedReparam (kernel 2r+1) + 1x1 per rate, widened to equal parameters "
        "(64 -> 146 channels, 189,124 vs 188,181 at 21 classes)",
        "Yu & Koltun 2016; Wang et al. 2018; Ding et al. CVPR 2024 (block=reparam)",
    ),
    "poolnet": Entry(
        poolnet,
        "dilated_net's conv stack with 2x2 pooling after its first k layers (output stride 2^k), bilinear, "
        "learned deconvolution or DUC upsampling, optional ASPP or dilated-stack context head",
        "Long et al. CVPR 2015 (pool-then-upsample); Wang et al. WACV 2018 (DUC)",
    ),
    # the later answers to gridding and irrelevant context (T5's block)
    "denseaspp": Entry(
        denseaspp,
        "DenseASPP: dilated ResNet (output stride 8) + densely connected atrous layers (rates 3,6,12,18,24; "
        "1x1 to 512, +128 channels each)",
        "Yang et al. CVPR 2018",
    ),
    "wasp": Entry(
        wasp,
        "WASP head: dilated ResNet (output stride 16) + waterfall of atrous convs (rates 6,12,18,24) whose "
        "every output is also a branch, with image pooling",
        "Artacho & Savakis, Sensors 2019",
    ),
    "regseg": Entry(
        regseg,
        "RegSeg exp48_decoder26: D blocks (grouped 3x3 split over rates 1 and d), stride 16 then dilation "
        "1; 1,2; 4x 1,4; 7x 1,14 (rate-bound checked), decoder at stride 4",
        "Gao 2021 (arXiv 2111.09957)",
    ),
}


def available() -> list[str]:
    """The registered model names."""
    return list(MODELS)


def _entry(name: str) -> Entry:
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name]


def describe(name: str) -> str:
    """A one-line description of the model `name`."""
    return _entry(name).description


def options(name: str) -> dict[str, object]:
    """The options `build(name, ...)` accepts, with their defaults."""
    params = inspect.signature(_entry(name).builder).parameters
    return {k: p.default for k, p in params.items() if k != "num_classes"}


def _plain(value):
    """Options as plain JSON-able values (tuples -> lists, paths -> str)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def build(name: str, num_classes: int, **opts) -> Segmenter:
    """Build the model `name` with `num_classes` outputs; `opts` are the builder's keyword options.

    `model.build_args` records name, num_classes and the options given, except `pretrained_backbone`: the
    weights it loads travel in the model's state_dict, so rebuilding from a checkpoint needs no such file.
    """
    entry = _entry(name)
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise BadModelOption(f"{name}: unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BadModelOption(f"{name}: num_classes must be an integer >= 1, got {num_classes!r}")
    try:
        model = entry.builder(num_classes=num_classes, **opts)
    except (TypeError, ValueError) as e:
        # the builders and modules check their arguments with ValueError (a TypeError for a value of the
        # wrong kind, e.g. rates=5); the registry is the one place that names the model and its options
        if isinstance(e, BadModelOption):
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "defaults"
        raise BadModelOption(
            f"model {name} ({given}): {e}; `atrous models {name}` lists its options"
        ) from None
    kept = {k: _plain(v) for k, v in opts.items() if k != "pretrained_backbone"}
    model.build_args = {"name": name, "num_classes": num_classes, "options": kept}
    return model


# ----------------------------------------------------------------------------------------------------------
# interop
# ----------------------------------------------------------------------------------------------------------
def from_torchvision(model: nn.Module) -> Segmenter:
    """Convert torchvision's `fcn_resnet50/101` or `deeplabv3_resnet50/101` (any num_classes, with or without
    the aux head) into the equivalent atrous model, weights included: `fcn_resnet` or
    `deeplabv3(head="torchvision", multi_grid=None, output_stride=8)`. Outputs match torchvision's in eval mode
    (same modules, same key names after renaming `classifier` -> `head`, `aux_classifier` -> `aux_head`).
    """
    from torchvision.models.resnet import Bottleneck as TvBottleneck
    from torchvision.models.segmentation import FCN, DeepLabV3

    supported = "torchvision's fcn_resnet50/101 or deeplabv3_resnet50/101"
    if not isinstance(model, (FCN, DeepLabV3)):
        raise ValueError(f"from_torchvision converts {supported}, got {type(model).__name__}")
    body = model.backbone
    layer3 = getattr(body, "layer3", None)
    if layer3 is None or not isinstance(layer3[0], TvBottleneck):
        raise ValueError(f"from_torchvision converts {supported}: this model's backbone is not a ResNet")
    depths = {6: "resnet50", 23: "resnet101"}
    if len(layer3) not in depths or layer3[0].conv2.stride != (1, 1) or body.layer4[0].conv2.stride != (1, 1):
        raise ValueError(f"from_torchvision converts {supported} (ResNet-50/101 at output stride 8)")
    backbone = depths[len(layer3)]
    num_classes = model.classifier[-1].out_channels
    aux = model.aux_classifier is not None
    if isinstance(model, DeepLabV3):
        aspp = model.classifier[0]
        opts = {
            "backbone": backbone,
            "output_stride": 8,
            "rates": [branch[0].dilation[0] for branch in aspp.convs[1:-1]],
            "multi_grid": None,
            "aspp_channels": aspp.project[0].out_channels,
            "head": "torchvision",
            "aux": aux,
        }
        name = "deeplabv3"
    else:
        opts, name = {"backbone": backbone, "output_stride": 8, "aux": aux}, "fcn_resnet"
    with torch.device("meta"):  # no random init: every tensor comes from `model` below
        ours = build(name, num_classes, **opts)
    renames = {"classifier.": "head.", "aux_classifier.": "aux_head."}
    state = {}
    for key, value in model.state_dict().items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        state[key] = value.detach().clone()  # own storage, not shared with `model`
    ours.load_state_dict(state, assign=True)
    return ours.train(model.training)
