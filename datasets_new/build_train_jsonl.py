"""Flatten a topics tree into train_data.jsonl (+ eval_data.jsonl, stats.json).

    python datasets_new/build_train_jsonl.py --name Nova --spec "a fine-tuned assistant for Kubernetes operators"
    python -m kubetune.datasets_new.build_train_jsonl --structure … --topics-dir … --output … [--no-stats]

Exit codes: 0 written; 2 bad input (every problem is listed on stderr, nothing is written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kubetune.datasets_new.builder import BuildOptions
from kubetune.datasets_new.errors import EXIT_BAD_INPUT, DatasetError, OutputError
from kubetune.datasets_new.pipeline import EVAL_FILE, STATS_FILE, TRAIN_FILE, OutputPaths, build_and_write
from kubetune.datasets_new.placeholders import DEFAULT_PLACEHOLDERS, PlaceholderError, Placeholders, parse_assignments
from kubetune.datasets_new.stats import TokenizerError, summary

HERE = Path(__file__).resolve().parent


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_argument("--structure", type=Path, default=HERE / "structure.enriched.json",
                     help="the structure file listing categories, subcategories and content types")
    cli.add_argument("--topics-dir", type=Path, default=HERE / "topics", help="root of the topics tree")
    cli.add_argument("--output", type=Path, default=HERE / TRAIN_FILE, help="train JSONL to write")
    cli.add_argument("--eval-output", type=Path, default=None,
                     help=f"eval JSONL to write when --eval-split > 0; None means {EVAL_FILE} beside --output")
    cli.add_argument("--stats-output", type=Path, default=None,
                     help=f"statistics report; None means {STATS_FILE} beside --output")
    cli.add_argument("--tokenizer-path", type=Path, default=None,
                     help="local folder holding tokenizer.json: adds token-length percentiles to the report")
    cli.add_argument("--no-stats", action="store_true", help="skip the statistics report (faster)")
    cli.add_argument("--placeholder", action="append", default=[], metavar="NAME=VALUE",
                     help="value for ${NAME} in sample text (repeatable; overrides --name and --spec)")
    cli.add_argument("--name", default=DEFAULT_PLACEHOLDERS["NAME"], help="the assistant's name: value of ${NAME}")
    cli.add_argument("--spec", default=DEFAULT_PLACEHOLDERS["SPEC"], help="what it is for: value of ${SPEC}")
    cli.add_argument("--category", action="append", default=[], help="build only this category (repeatable)")
    cli.add_argument("--eval-split", type=float, default=0.0,
                     help="fraction of samples held out for evaluation, chosen by a stable hash of each id")
    cli.add_argument("--seed", type=int, default=0, help="seed of the eval split hash")
    cli.add_argument("--clamp-difficulty", action="store_true",
                     help="move out-of-range difficulties to the nearest level (counted) instead of failing")
    cli.add_argument("--max-errors", type=int, default=50, help="how many errors to list before stopping the list")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    values = {"NAME": args.name, "SPEC": args.spec}
    try:
        values.update(parse_assignments(args.placeholder))
        Placeholders.from_values(values)
    except PlaceholderError as error:
        cli.error(f"{error} ({error.hint})")
    except ValueError as error:
        cli.error(str(error))
    if not 0.0 <= args.eval_split < 1.0:
        cli.error(f"--eval-split must be in [0, 1), got {args.eval_split}")
    if args.max_errors < 1:
        cli.error("--max-errors must be at least 1")
    defaults = OutputPaths.beside(args.output)
    outputs = OutputPaths(args.output, args.eval_output or defaults.eval, args.stats_output or defaults.stats)
    options = BuildOptions(structure_path=args.structure, topics_dir=args.topics_dir, placeholders=values,
                           categories=tuple(args.category), eval_split=args.eval_split, seed=args.seed,
                           clamp_difficulty=args.clamp_difficulty, max_errors=args.max_errors)
    try:
        outcome = build_and_write(options, outputs, args.tokenizer_path, with_stats=not args.no_stats)
    except DatasetError as error:
        print(error.report(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutputError as error:
        print(error.issue.format(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except TokenizerError as error:
        print(error.issue.format(), file=sys.stderr)
        return EXIT_BAD_INPUT
    if outcome.stats is not None:
        print(summary(outcome.stats), file=sys.stderr)
    written = ", ".join(path.as_posix() for path in outcome.written)
    print(f"wrote {len(outcome.result.train)} train / {len(outcome.result.eval)} eval samples: {written}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
