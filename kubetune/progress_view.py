"""Live progress for `kubetune run`: one line per stage, a training bar from the job's progress.json."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, TextIO

from kubetune.api.types import STAGES
from kubetune.planner import Done, Plan
from kubetune.store import Store

BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_size(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def progress_line(stage: str, progress: Mapping[str, Any]) -> str:
    """`train  ██████░░░░  12/40  30%  loss 1.234  eval 1.456  412 tok/s  eta 1m20s` (fields shown when present;
    eval is the held-out loss at the newest checkpoint)."""
    parts = [f"{stage:<9}"]
    step, total = progress.get("step"), progress.get("totalSteps")
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        filled = min(BAR_WIDTH, round(BAR_WIDTH * step / total))
        parts.append("█" * filled + "░" * (BAR_WIDTH - filled))
        parts.append(f"{step}/{total} {100 * step // total:3d}%")
    if isinstance(progress.get("loss"), (int, float)):
        parts.append(f"loss {progress['loss']:.4f}")
    if isinstance(progress.get("evalLoss"), (int, float)):
        parts.append(f"eval {progress['evalLoss']:.4f}")
    if isinstance(progress.get("tokensPerSecond"), (int, float)):
        parts.append(f"{progress['tokensPerSecond']:.0f} tok/s")
    if isinstance(progress.get("etaSeconds"), (int, float)):
        parts.append(f"eta {format_duration(progress['etaSeconds'])}")
    message = progress.get("message")
    if message and len(parts) == 1:
        parts.append(str(message))
    return "  ".join(parts)


class ProgressView:
    POLL_S = 1.0
    PLAIN_EVERY_S = 10.0  # without a terminal, print a line at most this often

    def __init__(self, run: str, out: TextIO) -> None:
        self.run = run
        self.out = out
        self.tty = out.isatty()
        self._polled_at = 0.0
        self._printed_at = 0.0
        self._last_line = ""

    def update(self, stage: str, store: Store, prefix: str, *, done: bool = False) -> None:
        now = time.monotonic()
        if not done and now - self._polled_at < self.POLL_S:
            return
        self._polled_at = now
        try:
            progress = json.loads(store.get_bytes(f"{prefix}/progress.json"))
        except Exception:  # noqa: BLE001 - not written yet, or mid-rewrite: show the stage name alone
            progress = {}
        line = progress_line(stage, progress)
        if self.tty:
            self.out.write("\r\033[K" + line + ("\n" if done else ""))
            self.out.flush()
        elif done or (line != self._last_line and now - self._printed_at >= self.PLAIN_EVERY_S):
            print(line, file=self.out, flush=True)
            self._printed_at = now
        self._last_line = line

    def final(self, step: Plan, durations: Mapping[str, float]) -> None:
        print(f"\n{self.run}:", file=self.out)
        for stage in STAGES:
            view = step.stages[stage]
            if isinstance(step.action, Done) and view.ref is None:
                continue  # a finished run that never reached it: the spec does not run it (publish, a disabled gate)
            took = f"{durations[stage]:7.1f}s" if stage in durations else ""
            message = f"  {view.message}" if view.message else ""
            print(f"  {stage:<9} {view.phase:<10} {took}{message}", file=self.out)
        self.out.flush()
