"""Memory layout: channels_last (NHWC) weights and activations, for inference (`optimize`) and for training
(`prepare_training`). oneDNN's convolutions run several times faster in NHWC than in NCHW on the CPU
(benchmarks/models.py measures it); the input is converted once, at the model's entry, by a pre-hook.
"""

from __future__ import annotations

import torch
from torch import nn


def to_channels_last(model: nn.Module) -> nn.Module:
    """`model`, in place: channels_last parameters and a pre-hook that converts each (N, C, H, W) input."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_to_channels_last, with_kwargs=True)
    return model


def _to_channels_last(module, args, kwargs):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return args, kwargs


# torch 2.14.1's CPU backward of a 1x1 convolution with stride > 1 and few input channels per group
# corrupts the heap in channels_last ("corrupted double-linked list", or a segfault), whatever the output
# channels or the batch; measured in one subprocess per case (PyTorch's oneDNN path, 12x12 input, batch 8):
# these input channels crash, 1 and >= 8 do not. 3x3 strided and 1x1 stride-1 convolutions are fine.
_CL_BACKWARD_CRASH_CHANNELS = range(2, 8)


def _crashes_in_channels_last(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (1, 1)
        and max(conv.stride) > 1
        and conv.in_channels // conv.groups in _CL_BACKWARD_CRASH_CHANNELS
    )


def _to_contiguous(module, args, kwargs):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        args = (args[0].contiguous(), *args[1:])
    return args, kwargs


def _output_to_channels_last(module, args, output):
    return output.contiguous(memory_format=torch.channels_last)


def prepare_training(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """Set `model` up for fast training, in place, and return it: channels_last parameters and an input
    hook that converts each (N, C, H, W) batch to channels_last (benchmarks/models.py measures the win on
    the CPU). Parameters keep their identity, so an optimizer may be built before or after the call.
    Call it once after building (or loading) the model; the logits come back channels_last.

    Safe on every model: each `nn.Conv2d` whose channels_last backward crashes torch 2.14.1 on the CPU
    (1x1, stride > 1, 2-7 input channels per group: tiny-width ResNets' downsampling shortcuts) keeps NCHW
    weights and runs on an NCHW copy of its input, its output converted back to channels_last; these
    layers are so narrow that the two conversions cost next to nothing. Same values either way.
    """
    if channels_last:
        to_channels_last(model)
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and _crashes_in_channels_last(m):
                m.weight.data = m.weight.data.clone(memory_format=torch.contiguous_format)  # NCHW strides
                m.register_forward_pre_hook(_to_contiguous, with_kwargs=True)
                m.register_forward_hook(_output_to_channels_last)
    return model
