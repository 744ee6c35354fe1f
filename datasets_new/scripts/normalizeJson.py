"""Turn pasted multiline text into a JSON string literal, ready to drop into a topic file.

    python datasets_new/scripts/normalizeJson.py                 # reads scripts/placeholder.txt
    python datasets_new/scripts/normalizeJson.py answer.txt
    pbpaste | python datasets_new/scripts/normalizeJson.py -

Newlines become \\n, quotes and backslashes are escaped, non-ASCII text stays readable. Trailing whitespace at the
end of the text is dropped (editors add a final newline); leading indentation and blank lines inside are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kubetune.datasets_new.errors import DatasetIssue, printable
from kubetune.datasets_new.files import read_regular_file

DEFAULT_INPUT = Path(__file__).resolve().parent / "placeholder.txt"


def to_json_string(text: str) -> str:
    return json.dumps(text.replace("\r\n", "\n").rstrip(), ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("input", nargs="?", default=str(DEFAULT_INPUT), help="text file, or - for stdin")
    args = cli.parse_args(argv)
    data = sys.stdin.buffer.read() if args.input == "-" else read_regular_file(Path(args.input), args.input)
    if isinstance(data, DatasetIssue):
        print(data.format(), file=sys.stderr)
        return 2
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        print(f"{printable(args.input)}: byte 0x{data[error.start]:02x} at offset {error.start} is not valid UTF-8\n"
              "    hint: save the text as UTF-8", file=sys.stderr)
        return 2
    print(to_json_string(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
