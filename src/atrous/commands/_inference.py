"""Arguments shared by `atrous eval` and `atrous predict`: the checkpoint, the device and the inference
strategy (whole image, `--sliding`, `--tta`). Standard library only at module level."""

from __future__ import annotations

import argparse


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CK", help="checkpoint from `atrous train`")
    parser.add_argument(
        "--sliding",
        type=parse_size,
        metavar="SIZE",
        help="sliding-window inference with SIZE or H,W windows (logits averaged where windows overlap)",
    )
    parser.add_argument(
        "--stride", type=parse_size, metavar="S", help="sliding-window step (default: 2/3 of the window)"
    )
    parser.add_argument(
        "--tta",
        metavar="LIST",
        help="multi-scale + flip inference, e.g. flip,0.75,1.0,1.25 (scales and/or 'flip'; "
        "softmax probabilities averaged, as DeepLab)",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default), cuda, cuda:N or auto (CUDA when available)"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="inference precision (default fp32). bf16: CPUs and GPUs with bf16, fast where the hardware has "
        "it natively (AVX-512-BF16/AMX, Ampere+ GPUs), emulated and slower elsewhere; fp16: CUDA only",
    )
    parser.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="run the model as loaded instead of atrous.optimize's copy (BatchNorm folded, channels_last; "
        "used on the CPU by default, same outputs to 1e-4)",
    )


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size N or H,W, got {text!r}")
    return parts[0], parts[1]


def build_infer_from_args(args: argparse.Namespace):
    from atrous.errors import AtrousError
    from atrous.inference import build_infer, parse_tta

    if args.stride is not None and args.sliding is None:
        raise AtrousError("--stride needs --sliding SIZE: give the window size too")
    scales, flip = parse_tta(args.tta) if args.tta else ((1.0,), False)
    try:
        return build_infer(sliding=args.sliding, stride=args.stride, scales=scales, flip=flip)
    except ValueError as e:
        raise AtrousError(f"--sliding {args.sliding} --stride {args.stride}: {e}") from None


def load_model(args: argparse.Namespace):
    """The checkpoint's model, in eval mode on `--device`, with `.meta`; on the CPU `atrous.optimize`'s
    inference copy unless `--no-optimize`; in `--precision` (the faster of autocast and cast weights,
    measured here)."""
    import torch

    from atrous.api import load
    from atrous.device import resolve_device
    from atrous.errors import AtrousError
    from atrous.optimize import optimize
    from atrous.optimize.pipeline import random_example
    from atrous.optimize.precision import PRECISIONS, check_supported, with_precision

    device = resolve_device(args.device, what="--device")
    dtype = PRECISIONS[args.precision]
    try:
        check_supported(dtype, device)
    except AtrousError as e:
        raise AtrousError(f"--precision {args.precision}: {e}") from None
    model = load(args.checkpoint, device=device)
    if args.optimize and device.type == "cpu":
        return optimize(model) if dtype == torch.float32 else optimize(model, dtype=dtype)
    return with_precision(model, dtype, example_input=random_example(model))
