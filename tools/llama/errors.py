"""Errors of the GGUF converter and reader."""


class ConversionError(Exception):
    """The model folder cannot be converted; a failed conversion leaves no output behind."""


class InvalidGGUF(ValueError):
    """A file is not a well-formed GGUF; the message names the file, the byte offset and what is wrong there."""


def one_line(message: str) -> str:
    """An error message as one printable line: whitespace runs (line breaks included, NEL and U+2028 too) become one
    space and other unprintable characters their escapes, so a hostile name cannot add lines or drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(message.split()))
