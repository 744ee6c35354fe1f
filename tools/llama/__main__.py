"""`python -m kubetune.llama convert MODEL_DIR --outtype q8_0 -o OUT_DIR` and `python -m kubetune.llama inspect FILE`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .convert import OUTTYPES, ConvertProgress, convert
from .errors import ConversionError
from .inspection import format_summary, summarize


def _print_progress(event: ConvertProgress) -> None:
    if event.stage == "write":
        percent = 100 * event.bytes_done / event.bytes_total if event.bytes_total else 100.0
        print(
            f"\r{event.outtype}: {event.tensors_done}/{event.tensors_total} tensors ({percent:.0f}%)",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if event.tensors_done == event.tensors_total:
            print(file=sys.stderr)
    else:
        print(f"{event.outtype}: {'quantizing with llama.cpp' if event.tensors_done == 0 else 'done'}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.llama", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert_parser = commands.add_parser("convert", help="convert a Hugging Face folder to GGUF")
    convert_parser.add_argument("model_dir", type=Path)
    convert_parser.add_argument(
        "--outtype",
        action="append",
        required=True,
        type=str.lower,
        choices=OUTTYPES,
        help="output type; repeat for several",
    )
    convert_parser.add_argument("-o", "--out-dir", type=Path, required=True)
    convert_parser.add_argument("--name", help="file name stem (default: the model folder's name)")
    convert_parser.add_argument("--quiet", action="store_true", help="no progress output")
    inspect_parser = commands.add_parser("inspect", help="show a GGUF file's metadata and tensors")
    inspect_parser.add_argument("gguf", type=Path)
    args = parser.parse_args(argv)

    if args.command == "inspect":
        print(format_summary(summarize(args.gguf)))
        return 0
    try:
        files = convert(
            args.model_dir,
            args.out_dir,
            args.outtype,
            basename=args.name,
            progress=None if args.quiet else _print_progress,
        )
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for file in files:
        print(f"{file.outtype}\t{file.size}\t{file.sha256}\t{file.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
