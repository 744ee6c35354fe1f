"""Fault injection and request accounting, configured at run time by the tests."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from tests.kube import errors

MUTATING_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class FaultKind(str, Enum):
    CONFLICT = "conflict"  # 409 Conflict on update/patch/delete (as if someone else wrote first)
    THROTTLE = "throttle"  # 429 TooManyRequests with Retry-After
    SERVER_ERROR = "server_error"  # 500 InternalError
    WATCH_GONE = "watch_gone"  # a watch answers an ERROR event with code 410 (resourceVersion too old)
    WATCH_DROP = "watch_drop"  # a watch connection is severed without a proper end of the stream

    def applies_to(self, verb: str) -> bool:
        if self is FaultKind.CONFLICT:
            return verb in MUTATING_VERBS - {"create"}
        if self in (FaultKind.WATCH_GONE, FaultKind.WATCH_DROP):
            return verb == "watch"
        return True


@dataclass
class Fault:
    """One injection rule. A request matches when its verb and resource are in the sets (None = any).

    `probability` draws per matching request; `times` bounds how many injections happen in total (None = no bound),
    so `Fault(kind, times=2)` is an explicit schedule: "the next two matching requests fail".
    `resources` are plurals, optionally with a subresource (`finetuneruns/status`).
    For watch faults, `after_seconds` lets the stream run that long (delivering events) before the fault strikes.
    """

    kind: FaultKind
    probability: float = 1.0
    times: int | None = None
    verbs: frozenset[str] | None = None
    resources: frozenset[str] | None = None
    retry_after: int = 1
    after_seconds: float = 0.0
    injected: int = 0

    def matches(self, verb: str, resource: str) -> bool:
        if not self.kind.applies_to(verb) or (self.times is not None and self.injected >= self.times):
            return False
        if self.verbs is not None and verb not in self.verbs:
            return False
        plural = resource.partition("/")[0]
        return self.resources is None or resource in self.resources or plural in self.resources

    def error(self, qualified: str, name: str) -> errors.ApiError:
        if self.kind is FaultKind.CONFLICT:
            return errors.conflict(qualified, name, "injected conflict")
        if self.kind is FaultKind.THROTTLE:
            return errors.too_many_requests(self.retry_after)
        if self.kind is FaultKind.WATCH_GONE:
            return errors.gone("too old resource version (injected)")
        return errors.internal_error("injected server error")


class FaultPlan:
    """The active faults plus counters of requests and injections; thread-safe."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._random = random.Random(seed)
        self.requests: Counter[tuple[str, str]] = Counter()  # (verb, resource[/subresource]) -> count
        self.injected: Counter[tuple[str, str, str]] = Counter()  # (kind, verb, resource) -> count

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def inject(
        self,
        kind: FaultKind | str,
        *,
        probability: float = 1.0,
        times: int | None = None,
        verbs: set[str] | None = None,
        resources: set[str] | None = None,
        retry_after: int = 1,
        after_seconds: float = 0.0,
    ) -> Fault:
        return self.add(
            Fault(
                FaultKind(kind),
                probability,
                times,
                frozenset(verbs) if verbs is not None else None,
                frozenset(resources) if resources is not None else None,
                retry_after,
                after_seconds,
            )
        )

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._random.seed(seed)

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.injected.clear()

    def request_counts(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self.requests)

    def injected_counts(self) -> Counter[tuple[str, str, str]]:
        with self._lock:
            return Counter(self.injected)

    def on_request(self, verb: str, resource: str) -> Fault | None:
        """Count the request and decide whether a fault strikes it (the first matching rule that draws true)."""
        with self._lock:
            self.requests[(verb, resource)] += 1
            for fault in self._faults:
                if fault.matches(verb, resource) and self._random.random() < fault.probability:
                    fault.injected += 1
                    self.injected[(fault.kind.value, verb, resource)] += 1
                    return fault
        return None
