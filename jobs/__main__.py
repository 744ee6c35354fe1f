"""`python -m kubetune.jobs <stage> --run run.json`: the one entrypoint every stage Job runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from kubetune.api.types import STAGES
from kubetune.cpus import usable_cpus
from kubetune.jobs.runtime import JobContext, run_job
from kubetune.sources import SOURCES


def stage_body(stage: str) -> Callable[[JobContext], None]:
    # Imported lazily: the train stage pulls in torch, the dataset stage must not.
    module = importlib.import_module(f"kubetune.jobs.{stage}")
    body: Callable[[JobContext], None] = module.run
    return body


def fit_torch_threads() -> None:
    """torch's CPU threads follow the CPUs this process may use (a pod's CPU limit), not the node's cores: a pod
    limited to 2 CPUs on a 64-core node would otherwise run 32 threads that wait at barriers for throttled peers.
    Kept: OMP_NUM_THREADS (torchrun sets it for several ranks); stages that never import torch start no pool."""
    torch = sys.modules.get("torch")
    if torch is not None and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(usable_cpus())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.jobs", description=__doc__)
    parser.add_argument("stage", choices=(SOURCES, *STAGES))
    parser.add_argument("--run", type=Path, default=Path("/etc/kubetune/run.json"), help="resolved run config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    body = stage_body(args.stage)
    fit_torch_threads()
    return run_job(args.stage, args.run, body)


if __name__ == "__main__":
    sys.exit(main())
