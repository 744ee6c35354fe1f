"""The `kubetune` command."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kubetune.api.crd import render as render_crd
from kubetune.api.validate import InvalidManifest, load_runs

EXIT_INVALID = 1


def cmd_validate(args: argparse.Namespace) -> int:
    # A manifest may hold any character (and a file name any byte): errors name them, never crash printing them.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    failed = False
    for path in args.files:
        try:
            runs = load_runs(path)
        except InvalidManifest as exc:
            failed = True
            for error in exc.errors:
                print(f"{exc.source}: {error}", file=sys.stderr)
            continue
        except OSError as exc:
            failed = True
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            continue
        for run in runs:
            print(f"{path}: FineTuneRun {run.namespace}/{run.name} is valid")
    return EXIT_INVALID if failed else 0


def cmd_crd(args: argparse.Namespace) -> int:
    text = render_crd()
    for output in args.output or []:
        output.write_text(text, encoding="utf-8")
    if not args.output:
        sys.stdout.write(text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kubetune.local import run_locally  # local executor: imports the job runtime

    return run_locally(args.file, store=args.store, from_stage=args.from_stage, to_stage=args.to_stage)


def cmd_status(args: argparse.Namespace) -> int:
    from kubetune.status_view import load_status, render_describe, render_get

    try:
        document = load_status(args.run, args.namespace)
    except FileNotFoundError as exc:
        print(f"kubetune: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_get(document))
    sys.stdout.write("\n" + render_describe(document))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from kubetune.ask import ask, resolve_target

    try:
        target = resolve_target(args.target, base=args.base, store=args.store)
    except (ValueError, FileNotFoundError, InvalidManifest) as exc:
        print(f"kubetune: {exc}", file=sys.stderr)
        return 1
    answer = ask(target, args.prompt, args.max_tokens)
    print(f"[{target.label}] {args.prompt}\n  → {answer}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from kubetune.check import check
    from kubetune.jobs.evaluate import summarize

    try:
        run = load_runs(args.run)[0]
        result = check(args.target, run, args.workdir)
    except InvalidManifest as exc:
        for error in exc.errors:
            print(f"{exc.source}: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"kubetune: {exc}", file=sys.stderr)
        return 1
    for report in result.reports:
        print(summarize(report))
        for prompt in report["prompts"]:
            mark = "pass" if prompt["passed"] else "FAIL"
            print(f"  [{mark}] {prompt['prompt']!r} → {prompt['answer']!r} ({prompt['reason']})")
    for failure in result.failures:
        print(f"gate failed: {failure}", file=sys.stderr)
    return 1 if result.failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Kubernetes-native LLM fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check FineTuneRun manifests against the API (exit 1 on any error)")
    validate.add_argument("files", nargs="+", type=Path)
    validate.set_defaults(func=cmd_validate)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the API types")
    crd.add_argument("-o", "--output", type=Path, action="append",
                     help="write to this file instead of stdout (repeatable: crds/ and the Helm chart's crds/)")
    crd.set_defaults(func=cmd_crd)

    run = sub.add_parser("run", help="run a FineTuneRun on this machine, stage by stage")
    run.add_argument("file", type=Path)
    run.add_argument("--store", help="store folder or URI (default: .kubetune/store)")
    run.add_argument("--from-stage", choices=("dataset", "train", "merge", "convert", "evaluate"),
                     help="re-run this stage and the ones after it even if cached")
    run.add_argument("--to-stage", choices=("dataset", "train", "merge", "convert", "evaluate"),
                     help="stop after this stage (e.g. dataset: check and build the data without training)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="a local run's status, as `kubectl get ftr -o wide` and `kubectl describe`")
    status.add_argument("run", help="the run's metadata.name")
    status.add_argument("-n", "--namespace", default="default")
    status.set_defaults(func=cmd_status)

    ask = sub.add_parser("ask", help="ask a run's fine-tuned GGUF (or its bundled base model, or a GGUF) in llama.cpp")
    ask.add_argument("target", type=Path, help="a FineTuneRun manifest that ran locally, or a .gguf file")
    ask.add_argument("prompt")
    ask.add_argument("--base", action="store_true", help="ask the run's base model instead (bundled models)")
    ask.add_argument("--store", help="the store the run used, if not the default")
    ask.add_argument("--max-tokens", type=int, default=96)
    ask.set_defaults(func=cmd_ask)

    gate = sub.add_parser("check", help="run a run's evaluate gate on an adapter checkpoint, a merged folder or a GGUF")
    gate.add_argument("target", type=Path, help="adapter folder, merged model folder or .gguf file")
    gate.add_argument("--run", type=Path, required=True, help="the FineTuneRun whose prompts and export types apply")
    gate.add_argument("--workdir", type=Path,
                      help="keep the merged model and GGUF files here (default: a temp dir, removed afterwards)")
    gate.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
