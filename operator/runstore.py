"""Which store a run uses and which Secret holds its credentials (the run's spec, else the operator's defaults), and
the clients that read those stores."""

from __future__ import annotations

import threading

from kubetune.api.types import StorageSpec
from kubetune.operator.settings import OperatorSettings
from kubetune.runconfig import StoreConfig
from kubetune.store import Store, open_store


class NoStoreConfigured(ValueError):
    """Neither the run nor the operator names a store."""


def resolve_store(storage: StorageSpec, settings: OperatorSettings) -> StoreConfig:
    """A run that names its store gets exactly that; one that does not gets the operator's default store whole
    (its endpoint, region and addressing belong to it)."""
    if storage.uri:
        return StoreConfig(uri=storage.uri, endpoint=storage.endpoint, region=storage.region,
                           path_style=storage.path_style)
    if not settings.store_uri:
        raise NoStoreConfigured(
            "spec.storage.uri is not set and the operator has no default store (Helm value store.uri)")
    return StoreConfig(uri=settings.store_uri, endpoint=storage.endpoint or settings.store_endpoint,
                       region=storage.region or settings.store_region,
                       path_style=storage.path_style or settings.store_path_style)


def credentials_secret(storage: StorageSpec, settings: OperatorSettings) -> str | None:
    """The Secret whose AWS_* keys reach the jobs; none for a local-folder store."""
    if not resolve_store(storage, settings).uri.startswith("s3://"):
        return None
    return storage.credentials_secret or settings.credentials_secret


class StoreClients:
    """One store client per store configuration, shared by the threads that read runs' stores. A client is dropped
    when its store fails, so that the next one reads its credentials (mounted, rotated) again."""

    def __init__(self) -> None:
        self._clients: dict[StoreConfig, Store] = {}
        self._lock = threading.Lock()

    def get(self, config: StoreConfig) -> Store:
        with self._lock:
            if config not in self._clients:
                self._clients[config] = open_store(config.uri, endpoint=config.endpoint, region=config.region,
                                                   path_style=config.path_style)
            return self._clients[config]

    def drop(self, config: StoreConfig) -> None:
        with self._lock:
            self._clients.pop(config, None)
