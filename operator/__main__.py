"""`python -m kubetune.operator`: run the operator with settings from the environment (see settings.py)."""

from __future__ import annotations

import gc
import logging

import kopf

from kubetune.operator.handlers import register
from kubetune.operator.kube import KubeApi, connect
from kubetune.operator.metrics import Metrics
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.web import serve_web


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every handler's success on every object at INFO: with hundreds of runs, thousands of lines a minute
    # and ~5% of the operator's CPU under load. Its warnings and errors (a handler failing, retrying) still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = OperatorSettings.from_env()
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    configuration = connect()
    if settings.web_port:
        serve_web(settings, configuration)
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)
    register(registry, Reconciler(settings, KubeApi(configuration), metrics), settings)
    tune_garbage_collector()
    kopf.run(
        registry=registry,
        standalone=settings.standalone,
        namespaces=list(settings.namespaces),
        clusterwide=not settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    )


# Young-generation size before the collector runs (Python's default: 700 allocations).
GC_YOUNG_THRESHOLD = 5000


def tune_garbage_collector() -> None:
    """Fewer and shorter garbage-collector pauses: each one stops every reconcile in flight.

    With Python's defaults, a batch of 500 runs (80 s) set off 12-14 full collections of up to 0.2-0.3 s of CPU each
    (0.5 s of wall time on the busy benchmark machine), straight into the hand-offs in flight. The objects that live
    as long as the process (modules, kopf, the API types; a third of the heap under that load) are frozen out of every
    collection, and a larger young generation lets the short-lived objects of a reconcile (watch events, request and
    response bodies) die before they reach the old generation, whose growth is what sets off a full collection: 1 full
    collection in such a batch, about half the collector's CPU, the same peak RSS.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


if __name__ == "__main__":
    main()
