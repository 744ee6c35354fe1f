"""The `kubetune` command."""

from __future__ import annotations

import argparse
import errno
import io
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kubetune.api.crd import render as render_crd
from kubetune.api.validate import InvalidManifest, load_runs
from kubetune.dataformats.convert import add_dataset_commands
from kubetune.llama.errors import ConversionError, one_line

EXIT_INVALID = 1
EXIT_BAD_INPUT = 2  # a file, field or store that cannot be used: one line on stderr names it
MAX_ANSWER_TOKENS = 2048  # `kubetune ask` runs llama.cpp with a 2048-token context
OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # metadata.name: no '/', so no path out of .kubetune


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            runs = load_runs(path, relative_paths=args.local)
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
        write_output(output, text)
    if not args.output:
        sys.stdout.write(text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kubetune.local import run_locally  # local executor: imports the job runtime

    return run_locally(require_file(args.file), store=args.store, from_stage=args.from_stage, to_stage=args.to_stage)


def cmd_status(args: argparse.Namespace) -> int:
    from kubetune.status_view import load_status, render_describe, render_get, status_path

    for what, value in (("run name", args.run), ("namespace", args.namespace)):
        if not OBJECT_NAME.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not a Kubernetes object name (lower-case letters, digits, '-', '.')")
    try:
        document = load_status(args.run, args.namespace)
        text = render_get(document) + "\n" + render_describe(document)
    except FileNotFoundError as exc:
        print(f"kubetune: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        # status.json is kubetune run's own file: one edited or cut short by hand says so, not a traceback.
        raise ValueError(f"{status_path(args.run, args.namespace)}: not a status kubetune run wrote "
                         f"({type(exc).__name__}); run `kubetune run` again to rewrite it") from None
    sys.stdout.write(text)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from kubetune.status_view import STATE_DIR
    from kubetune.webview.localsource import LocalRuns
    from kubetune.webview.server import WebView

    try:
        server = WebView(LocalRuns(STATE_DIR, args.store), args.host, args.port)
    except OSError as exc:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
                         "pick another --port or --host") from None
    print(f"kubetune: serving the runs under {STATE_DIR}/ at {server.url}/ (read-only; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from kubetune.ask import ask, resolve_target

    if args.target.suffix != ".gguf":
        require_file(args.target)
    target = resolve_target(args.target, base=args.base, store=args.store)
    answer = ask(target, args.prompt, args.max_tokens)
    print(f"[{target.label}] {args.prompt}\n  → {answer}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from kubetune.ask import check_model_gguf
    from kubetune.check import check
    from kubetune.jobs.evaluate import summarize

    run = load_runs(require_file(args.run), relative_paths=True)[0]  # as `kubetune run` reads it
    if args.target.suffix == ".gguf":
        check_model_gguf(args.target)  # llama.cpp runs in this process here: only a well-formed GGUF reaches it
    result = check(args.target, run, args.workdir)
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
    validate.add_argument("--local", action="store_true",
                          help="as `kubetune run` reads it: ./ and ../ paths are relative to the manifest's folder "
                          "(a server refuses them, so without --local they are errors)")
    validate.set_defaults(func=cmd_validate)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the API types")
    crd.add_argument("-o", "--output", type=Path, action="append",
                     help="write to this file instead of stdout (repeatable: crds/ and the Helm chart's crds/)")
    crd.set_defaults(func=cmd_crd)

    run = sub.add_parser("run", help="run a FineTuneRun on this machine, stage by stage")
    run.add_argument("file", type=Path)
    run.add_argument("--store", type=_store, help="store folder or URI (default: .kubetune/store)")
    run.add_argument("--from-stage", choices=("dataset", "train", "merge", "convert", "evaluate", "publish"),
                     help="re-run this stage and the ones after it even if cached")
    run.add_argument("--to-stage", choices=("dataset", "train", "merge", "convert", "evaluate", "publish"),
                     help="stop after this stage (e.g. dataset: check and build the data without training)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="a local run's status, as `kubectl get ftr -o wide` and `kubectl describe`")
    status.add_argument("run", help="the run's metadata.name")
    status.add_argument("-n", "--namespace", default="default")
    status.set_defaults(func=cmd_status)

    ui = sub.add_parser("ui", help="a read-only web view of the local runs: stages, loss curve, artifacts, answers")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=_port, default=8420, help="port to listen on (default: 8420; 0 picks a free one)")
    ui.add_argument("--store", type=_store, help="the store the runs used, if `kubetune run --store` named one")
    ui.set_defaults(func=cmd_ui)

    ask = sub.add_parser("ask", help="ask a run's fine-tuned GGUF (or its bundled base model, or a GGUF) in llama.cpp")
    ask.add_argument("target", type=Path, help="a FineTuneRun manifest that ran locally, or a .gguf file")
    ask.add_argument("prompt")
    ask.add_argument("--base", action="store_true", help="ask the run's base model instead (bundled models)")
    ask.add_argument("--store", type=_store, help="the store the run used, if not the default")
    ask.add_argument("--max-tokens", type=_max_tokens, default=96, help=f"1 to {MAX_ANSWER_TOKENS} (default 96)")
    ask.set_defaults(func=cmd_ask)

    gate = sub.add_parser("check", help="run a run's evaluate gate on an adapter checkpoint, a merged folder or a GGUF")
    gate.add_argument("target", type=Path, help="adapter folder, merged model folder or .gguf file")
    gate.add_argument("--run", type=Path, required=True, help="the FineTuneRun whose prompts and export types apply")
    gate.add_argument("--workdir", type=Path,
                      help="keep the merged model and GGUF files here (default: a temp dir, removed afterwards)")
    gate.set_defaults(func=cmd_check)

    add_dataset_commands(sub)  # kubetune dataset convert
    return parser


def _store(text: str) -> str:
    """A store folder or URI as given; `file:/x` (one slash) is a URI kubetune does not read, not a folder named
    `file:` to create in the current one."""
    if text.startswith("file:") and not text.startswith("file://"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file URI kubetune reads: write file:///absolute/dir")
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:  # the socket's bind would raise OverflowError, which is no bad-input error
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {text!r}")
    return value


def _max_tokens(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_ANSWER_TOKENS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_ANSWER_TOKENS}, not {text!r}")
    return value


OS_ERROR_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check its permissions",
    errno.EISDIR: "pass a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOSPC: "free some disk space",
    errno.ENXIO: "a named pipe that no process reads: start its reader first",
}


def write_output(path: Path, text: str) -> None:
    """Write `text` to the file a flag names. Opened without blocking: a named pipe no process reads is ENXIO at once
    instead of a wait forever, while one with a reader (`-o >(kubectl apply -f -)`) is written as usual. An error
    while writing (a full disk) names the file, as one while opening does."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None


def require_file(path: Path) -> Path:
    """A path the command will read: missing, a directory or a FIFO (reading one would block forever) is bad input,
    said before anything else happens."""
    mode = path.stat().st_mode  # FileNotFoundError, PermissionError: reported by main()
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file (a pipe, socket or device); pass a file")
    return path


def bad_input_line(error: Exception) -> str:
    """One line for an error the user's input caused: the file or field it names, what is wrong, what to do."""
    if isinstance(error, InvalidManifest):
        first = f"{error.source}: {error.errors[0]}" if error.errors else str(error)
        more = len(error.errors) - 1
        return first + (f" (and {more} more: `kubetune validate {error.source}` lists them)" if more > 0 else "")
    if _is_store_error(error):
        return f"store: {error}"
    if isinstance(error, OSError) and error.filename is not None:
        hint = OS_ERROR_HINTS.get(error.errno or 0, "check the path and its permissions")
        return f"{error.filename}: {error.strerror or error}; {hint}"
    return str(error)


def _is_store_error(error: Exception) -> bool:
    # Looked up, not imported: the store pulls in boto3, which `crd` and `validate` do not need.
    errors = sys.modules.get("kubetune.store.errors")
    return errors is not None and isinstance(error, errors.StoreError)


def is_bad_input(error: Exception) -> bool:
    """Errors our code raises for input it cannot use (InvalidManifest and InvalidGGUF are ValueErrors)."""
    return isinstance(error, (OSError, ValueError, ConversionError)) or _is_store_error(error)


def main(argv: Sequence[str] | None = None) -> int:
    # A manifest, a GGUF or a file name may hold any character: messages name them, never crash printing them.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): no traceback, and none when Python flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if not is_bad_input(exc):
            raise  # a bug: its traceback is what a report needs
        print(f"kubetune: {one_line(bad_input_line(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return code


if __name__ == "__main__":
    sys.exit(main())
