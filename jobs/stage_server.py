"""`python -P -m kubetune.jobs.stage_server MODULE...`: imports stage modules once, then forks each stage that
`kubetune run` asks for from itself, so that a stage starts with torch, transformers, peft and its own code already
imported (on a 2-core machine that import is 3–7 s of every torch stage's start, and most of it is shared).

Lines of JSON on stdin and stdout. The server says {"ready": true} once the MODULEs are imported (the next stage's,
while the one before it runs); the runner then writes {"argv": [...], "env": {...}, "log": path, "modules": [...]}:
the server imports the stage's modules (kept for the stages after it), forks, answers {"pid": N} and, when the stage
ended, {"exit": code} (Popen's returncode: negative for a signal). One stage at a time; it ends when stdin closes.

A forked stage is what `python -P -m kubetune.jobs ARGV` would be: that environment, argv and stdio on the log file,
the default SIGINT/SIGTERM handling, and the interpreter's ending (non-daemon threads joined, atexit handlers run,
SystemExit and uncaught exceptions mapped to the same exit codes). Forking is only sound from a process without
running Python threads, OpenMP pools or CUDA: imports start none (torch starts its OpenMP threads at the first
parallel op; OpenBLAS's pool, started by numpy's import, stops itself around a fork), a server whose imports started
a Python thread refuses to serve (the runner then starts stages as fresh processes), and the runner uses a server
only on hosts without GPUs.
"""

from __future__ import annotations

import atexit
import importlib
import io
import json
import os
import signal
import sys
import threading
import traceback
from typing import Any, NoReturn, TextIO


def main(modules: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the stage (same process group), not for us
    _import(modules)
    if threading.active_count() > 1:
        print("kubetune: the stage server's imports started threads; stages run as fresh processes", file=sys.stderr)
        return 0
    replies = sys.stdout
    _reply(replies, {"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        _import(request.get("modules", []))  # kept for later stages; nothing else runs while we import
        pid = os.fork()
        if pid == 0:
            _run_stage(request)
        _reply(replies, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _reply(replies, {"exit": os.waitstatus_to_exitcode(status)})
    return 0


def _import(modules: list[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a stage that needs it reports the error itself, with its code
            print(f"kubetune: the stage server did not import {module}: {error}", file=sys.stderr)


def _reply(replies: TextIO, message: dict[str, Any]) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()


def _run_stage(request: dict[str, Any]) -> NoReturn:
    """In the forked child: become the stage's process, run it, end as the interpreter would."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _redirect_stdio(request["log"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv: list[str] = request["argv"]
        sys.argv = ["-m kubetune.jobs", *argv]
        code = _exit_code(argv)
    finally:
        os._exit(code)


def _redirect_stdio(log_path: str) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    encoding = sys.stdout.encoding
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=encoding)
    # As PYTHONUNBUFFERED: every write reaches the log at once (the runner reads it while the stage runs).
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=encoding, write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=encoding, errors="backslashreplace",
                                  write_through=True)


def _exit_code(argv: list[str]) -> int:
    """`sys.exit(main(argv))` as the interpreter ends it."""
    from kubetune.jobs.__main__ import main

    interrupted = False
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = _system_exit_code(exit_.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code, interrupted = 1, True
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    _finalize()
    if interrupted:  # as CPython: an uncaught KeyboardInterrupt ends the process by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code & 0xFF


def _system_exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _finalize() -> None:
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
