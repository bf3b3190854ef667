"""``idruid convert``: layouts to and from other tools' formats (idruid.convert)."""

from __future__ import annotations

from ..errors import LayoutError


def add_convert(sub) -> None:
    """``idruid convert``."""
    from ..convert import FORMATS

    conv = sub.add_parser("convert", help="convert layouts between idruid JSON and other tools' formats")
    conv.add_argument("--from", dest="from_format", required=True, choices=list(FORMATS), help="input format")
    conv.add_argument("--to", dest="to_format", required=True, choices=list(FORMATS), help="output format")
    conv.add_argument("input", help="input file (coco-mig: folder or YAML; layoutsam: JSON Lines or parquet)")
    conv.add_argument("output", help="output file (coco-mig: folder, or a .yaml path for the YAML alone)")
    for side in ("width", "height"):
        conv.add_argument(
            f"--{side}", type=int, help=f"image {side} for pixel formats (default: the input's, else 512)"
        )
    conv.add_argument(
        "--captions",
        choices=["detailed", "short"],
        default="detailed",
        help="LayoutSAM caption field: detail_region_captions (default) or region_captions",
    )
    conv.add_argument(
        "--clip-boxes", action="store_true", help="cut pixel boxes that leave the image instead of failing"
    )


def cmd_convert(args) -> int:
    from ..convert import ConvertOptions, convert

    for side in ("width", "height"):
        if getattr(args, side) is not None and getattr(args, side) <= 0:
            raise LayoutError(f"--{side}: must be a positive number of pixels, got {getattr(args, side)}")
    options = ConvertOptions(args.width, args.height, captions=args.captions, clip=args.clip_boxes)
    result = convert(args.input, args.output, args.from_format, args.to_format, options)
    note = ""
    if result.truncated:
        note = f"; {result.truncated} kept only their first {options.max_instances} instances"
    print(f"wrote {result.layouts} layout(s) as {args.to_format} to {args.output}{note}")
    return 0


COMMANDS = {"convert": cmd_convert}
