"""`python -m kubetune.llama convert MODEL_DIR --outtype q8_0 -o OUT_DIR` and `python -m kubetune.llama inspect FILE`.

Bad input (a malformed GGUF, model folder or path) ends with one `error:` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .convert import OUTTYPES, ConvertProgress, convert
from .errors import ConversionError, InvalidGGUF, one_line
from .inspection import format_summary, summarize

EXIT_BAD_INPUT = 2


class ProgressPrinter:
    """Conversion progress on stderr. A `\\r` line stays open while tensors are written: an error ends it first."""

    def __init__(self) -> None:
        self.line_open = False

    def __call__(self, event: ConvertProgress) -> None:
        if event.stage == "write":
            percent = 100 * event.bytes_done / event.bytes_total if event.bytes_total else 100.0
            print(
                f"\r{event.outtype}: {event.tensors_done}/{event.tensors_total} tensors ({percent:.0f}%)",
                end="",
                file=sys.stderr,
                flush=True,
            )
            self.line_open = True
            if event.tensors_done == event.tensors_total:
                self.end_line()
        else:
            done = "quantizing with llama.cpp" if event.tensors_done == 0 else "done"
            print(f"{event.outtype}: {done}", file=sys.stderr)

    def end_line(self) -> None:
        if self.line_open:
            print(file=sys.stderr)
            self.line_open = False


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
    # gguf-py warns about tokenizer fields it skips; the converter checks those itself and says what is wrong once.
    logging.getLogger("gguf").setLevel(logging.ERROR)

    progress = ProgressPrinter()
    try:
        if args.command == "inspect":
            print(format_summary(summarize(args.gguf)))
            return 0
        files = convert(
            args.model_dir,
            args.out_dir,
            args.outtype,
            basename=args.name,
            progress=None if args.quiet else progress,
        )
    except (ConversionError, InvalidGGUF) as exc:
        message = str(exc)
    except OSError as exc:  # a missing or unreadable input, an output folder that cannot be written
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"{where}{exc.strerror or exc}; check the path and its permissions"
    else:
        for file in files:
            print(f"{file.outtype}\t{file.size}\t{file.sha256}\t{file.path}")
        return 0
    progress.end_line()
    print(f"error: {one_line(message)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(argv: Sequence[str] | None = None) -> int:
    """main() for the command line: output cut short by a closed pipe (`| head`) is not a traceback."""
    try:
        code = main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the failed flush again at exit: point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(run())
