"""The two outcomes a stage raises besides success and crashes, in a module free of the store and the run config,
so that the training ranks' code (`distributed`) stays importable on its own."""


class ConfigError(Exception):
    """Bad configuration or input: retrying cannot help (exit 2, never retried)."""


class Stopped(Exception):
    """The job was asked to stop and saved what it could (exit 143, resumed later)."""
