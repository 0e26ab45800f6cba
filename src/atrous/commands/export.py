"""`atrous export`: ONNX export of a checkpoint's model, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import argparse

from atrous.commands._inference import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CK", help="checkpoint from `atrous train`")
    parser.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument(
        "--dynamic",
        action="store_true",
        help="free batch, height and width axes (checked at a second input size too)",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(512, 512),
        metavar="H[,W]",
        help="input size to trace (the graph's fixed size without --dynamic; default 512)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=17,
        choices=range(11, 21),
        metavar="N",
        help="ONNX opset version, 11-20 (the TorchScript exporter's range from the opset of Resize; default 17)",
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=1e-3,
        help="largest allowed |onnxruntime - PyTorch| on the logits (default 1e-3)",
    )


def run(args: argparse.Namespace) -> int:
    from atrous._io import check_writable
    from atrous.api import load
    from atrous.export import export_onnx

    check_writable(args.onnx, what="--onnx")  # before the export and its onnxruntime check
    model = load(args.checkpoint)
    height, width = args.size
    results = export_onnx(
        model,
        args.onnx,
        height=height,
        width=width,
        dynamic=args.dynamic,
        opset=args.opset,
        atol=args.atol,
    )
    for shape, diff in results:
        print(f"input {'x'.join(map(str, shape))}: max |onnxruntime - pytorch| = {diff:.3g}")
    kind = "dynamic batch/height/width" if args.dynamic else f"fixed input 1x3x{height}x{width}"
    print(f"wrote {args.onnx} ({kind}; input 'image', output 'logits')")
    return 0
