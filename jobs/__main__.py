"""`python -m kubetune.jobs <stage> --run run.json`: the one entrypoint every stage Job runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from kubetune.api.types import STAGES
from kubetune.jobs.runtime import JobContext, run_job
from kubetune.sources import SOURCES


def stage_body(stage: str) -> Callable[[JobContext], None]:
    # Imported lazily: the train stage pulls in torch, the dataset stage must not.
    module = importlib.import_module(f"kubetune.jobs.{stage}")
    body: Callable[[JobContext], None] = module.run
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.jobs", description=__doc__)
    parser.add_argument("stage", choices=(SOURCES, *STAGES))
    parser.add_argument("--run", type=Path, default=Path("/etc/kubetune/run.json"), help="resolved run config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run_job(args.stage, args.run, stage_body(args.stage))


if __name__ == "__main__":
    sys.exit(main())
