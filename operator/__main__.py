"""`python -m kubetune.operator`: run the operator with settings from the environment (see settings.py)."""

from __future__ import annotations

import logging

import kopf

from kubetune.operator.handlers import register
from kubetune.operator.kube import KubeApi, connect
from kubetune.operator.metrics import Metrics
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every handler's success on every object at INFO: with hundreds of runs, thousands of lines a minute
    # and ~5% of the operator's CPU under load. Its warnings and errors (a handler failing, retrying) still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = OperatorSettings.from_env()
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)
    register(registry, Reconciler(settings, KubeApi(connect()), metrics), settings)
    kopf.run(
        registry=registry,
        standalone=settings.standalone,
        namespaces=list(settings.namespaces),
        clusterwide=not settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    )


if __name__ == "__main__":
    main()
