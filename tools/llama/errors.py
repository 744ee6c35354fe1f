"""Errors of the GGUF converter."""


class ConversionError(Exception):
    """The model folder cannot be converted. Raised before any output file is created."""
