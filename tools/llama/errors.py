"""Errors of the GGUF converter and reader."""


class ConversionError(Exception):
    """The model folder cannot be converted; a failed conversion leaves no output behind."""


class InvalidGGUF(ValueError):
    """A file is not a well-formed GGUF; the message names the file, the byte offset and what is wrong there."""
