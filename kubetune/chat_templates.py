"""Chat templates, resolved and rendered in one place for every stage (`spec.training.chatTemplate`).

Training (jobs/train_data.py), the training-time eval generations, the evaluate gate (tools/llama/checks.py) and
`kubetune ask` all render through `render_chat`, so the gate's prompt is the training prompt character for character.
The environment is transformers' (`apply_chat_template`: sandboxed, trim_blocks, lstrip_blocks, loop controls,
`raise_exception`, `strftime_now`, `tojson`), bounded so that a hostile template ends as a `ChatTemplateError` line:
attribute access goes through jinja2's immutable sandbox, string and list growth (`*`, `+`, `%`, `format`, padding
filters) is capped, the output is capped, and rendering stops after `RENDER_SECONDS` of template code.

Resolution: `chatml` is `templates/chat_template.jinja`; `inline` is the spec's text; `file` is read from a local path
or `s3://` (at most `MAX_TEMPLATE_BYTES`); `base` is the base model's own template (chat_template.jinja, else
tokenizer_config.json's `chat_template`), ChatML when it has none. The sources step hashes the text of the first three
(`base` by the base model's content digest, which holds its template) into the train and evaluate keys.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

from kubetune.api.chat_template import MAX_TEMPLATE_BYTES, ChatTemplateSpec
from kubetune.store import Store
from kubetune.store.factory import local_uri_path

TEMPLATE_PACKAGE, CHATML_FILE = "kubetune.templates", "chat_template.jinja"
MODEL_TEMPLATE_FILE = "chat_template.jinja"  # beside a model's tokenizer files (transformers >= 4.47 writes it)
MAX_MODEL_TEMPLATE_BYTES = 1 << 20  # a model's own template: 16x the spec's bound, far above any real one
RENDER_SECONDS = 2.0  # CPU seconds; a real template renders a conversation in well under a millisecond
MAX_RENDER_CHARS = 1 << 20  # on top of the messages' own text
_MAX_FORMAT_WIDTH = re.compile(r"[0-9]{5,}|\*")  # widths/precisions of 10,000+ (or from an argument) in a format
_NESTED_FORMAT_SPEC = re.compile(r"\{[^{}]*:[^{}]*\{")  # `{:>{}}`: a width from an argument
_TURN_MARKER = re.compile(r"<\|[^|<>\s]{1,32}\|>")  # ChatML / Llama-3 / Phi-3 style tokens a template writes
_TOKEN_LIKE = re.compile(r"<[^<>\s]{1,62}>|\[[^\[\]\s]{1,62}\]")  # an end-of-turn that is one special token
_ANSWER = "\x1fkubetune-answer\x1f"  # an assistant turn no template writes by itself
PROBE: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi."},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "An assistant."},
)
PROBE_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}  # where the tokenizer's are not at hand (sources step)

Messages = Sequence[Mapping[str, Any]]
StoreFactory = Callable[[str], "Store"]


class ChatTemplateError(ValueError):
    """A chat template that cannot be used as configured (the message names the field)."""


def chatml_template() -> str:
    return resources.files(TEMPLATE_PACKAGE).joinpath(CHATML_FILE).read_text(encoding="utf-8")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- rendering ----------------------------------------------------------------------------------------------------


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the template raised: {message}")


def _check_size(size: int) -> None:
    if size > MAX_RENDER_CHARS:
        raise ChatTemplateError(f"the template builds a value of {size} items (more than {MAX_RENDER_CHARS})")


def _check_format(text: Any) -> None:
    if isinstance(text, str) and _MAX_FORMAT_WIDTH.search(text):
        raise ChatTemplateError("the template formats with a width or precision of 10,000 or more")


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


def _bounded_filter(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A filter whose numeric arguments (widths, counts) and result are capped."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        for argument in (*args[1:], *kwargs.values()):
            if isinstance(argument, int) and not isinstance(argument, bool) and abs(argument) > MAX_RENDER_CHARS:
                raise ChatTemplateError(f"the template passes {argument} to the {name} filter")
        if name == "format" and args:
            _check_format(args[0])
        result = function(*args, **kwargs)
        _check_size(_sized(result))
        return result

    for attribute in ("jinja_pass_arg",):  # context/environment-passing filters keep their marker
        if hasattr(function, attribute):
            setattr(bounded, attribute, getattr(function, attribute))
    return bounded


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "*": lambda left, right: left * right, "**": lambda left, right: left**right,
    "+": lambda left, right: left + right, "%": lambda left, right: left % right,
}


def _environment() -> Any:
    from jinja2.compiler import CodeGenerator
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
            if op == "*":
                count = right if isinstance(left, (str, list, tuple)) else left
                if isinstance(count, int):
                    _check_size((_sized(left) or _sized(right)) * count)
            elif op == "+":
                _check_size(_sized(left) + _sized(right))
            elif op == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise ChatTemplateError(f"the template raises to the power {right}")
            elif op == "%":
                _check_format(left)
            return _BINOPS[op](left, right)

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            wrapped: Callable[..., str] | None = super().wrap_str_format(value)
            if wrapped is not None and _NESTED_FORMAT_SPEC.search(value.__self__):
                raise ChatTemplateError("the template formats with a width or precision taken from an argument")
            if wrapped is not None:
                _check_format(value.__self__)
            return wrapped

        def bounded_concat(self, values: Sequence[Any]) -> str:  # `a ~ b`, compiled by BoundedCodeGenerator
            parts = [str(value) for value in values]
            _check_size(sum(len(part) for part in parts))
            return "".join(parts)

    class BoundedCodeGenerator(CodeGenerator):
        def visit_Concat(self, node: Any, frame: Any) -> None:
            self.write("environment.bounded_concat((")
            for argument in node.nodes:
                self.visit(argument, frame)
                self.write(", ")
            self.write("))")

    BoundedEnvironment.code_generator_class = BoundedCodeGenerator
    environment = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters = {name: _bounded_filter(f, name) for name, f in environment.filters.items()}
    environment.filters["tojson"] = _bounded_filter(_tojson, "tojson")
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt))
    return environment


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@contextmanager
def _time_bound(seconds: float) -> Iterator[None]:
    """Stop template code that runs past `seconds`: a line tracer on the compiled template's frames only (jinja2
    compiles templates to Python whose code objects are named `<template>`), so other code runs untraced. The
    thread's CPU time counts, not wall time: a busy machine does not fail a template."""
    deadline = time.thread_time() + seconds

    def in_template(frame: FrameType, event: str, arg: Any) -> Any:
        if time.thread_time() > deadline:
            raise ChatTemplateError(f"the template did not finish rendering within {seconds:g} CPU seconds")
        return in_template

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return in_template if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


@functools.lru_cache(maxsize=16)  # a dataset renders every conversation with one template
def compile_template(text: str, field: str) -> Any:
    """The compiled template; a syntax error is one line naming `field` and the template's line."""
    from jinja2 import TemplateSyntaxError

    try:
        with _time_bound(RENDER_SECONDS):
            return _environment().from_string(text)
    except TemplateSyntaxError as error:
        raise ChatTemplateError(f"{field}: line {error.lineno}: {_one_line(error.message or 'syntax error')}"
                                ) from None
    except ChatTemplateError as error:
        raise ChatTemplateError(f"{field}: {error}") from None
    except SyntaxError as error:  # jinja2 parsed it, Python refuses what it compiled to (`{% break %}` outside a loop)
        raise ChatTemplateError(f"{field}: the template cannot be compiled: {_one_line(error.msg)}") from None
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as error:  # the parser's own limits
        raise ChatTemplateError(f"{field}: the template cannot be compiled: {type(error).__name__}") from None


def render_chat(template: str | Any, messages: Messages, *, add_generation_prompt: bool, field: str = "chat template",
                **variables: Any) -> str:
    """Render `messages` as transformers' apply_chat_template would, within the bounds above. `template` is the text
    or what `compile_template` returned (to compile once per dataset)."""
    compiled = compile_template(template, field) if isinstance(template, str) else template
    budget = MAX_RENDER_CHARS + sum(len(str(m.get("content", ""))) for m in messages)
    parts: list[str] = []
    size = 0
    try:
        with _time_bound(RENDER_SECONDS):
            for part in compiled.generate(messages=[dict(m) for m in messages],
                                          add_generation_prompt=add_generation_prompt, **variables):
                size += len(part)
                if size > budget:
                    raise ChatTemplateError(f"the template writes more than {budget} characters")
                parts.append(part)
    except ChatTemplateError as error:
        raise ChatTemplateError(f"{field}: {error}") from None
    except Exception as error:  # noqa: BLE001  template code raises anything: undefined names, type, security errors
        raise ChatTemplateError(f"{field}: rendering failed: {type(error).__name__}: {_one_line(str(error))}"
                                ) from None
    return "".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


# --- what a template means for training and generation --------------------------------------------------------------


def assistant_spans(template: str | Any, messages: Messages, *, field: str = "chat template", **variables: Any
                    ) -> tuple[str, list[range]]:
    """The rendered conversation and the character ranges the model learns: each assistant turn's content and its
    end-of-turn marker (trailing newlines after the marker are part of the template, not of the answer). The
    template must render conversations prefix by prefix: the prompt for a turn, then the turn, then the rest."""
    compiled = compile_template(template, field) if isinstance(template, str) else template
    text = render_chat(compiled, messages, add_generation_prompt=False, field=field, **variables)
    spans: list[range] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(compiled, messages[:index], add_generation_prompt=True, field=field, **variables)
        through = render_chat(compiled, messages[: index + 1], add_generation_prompt=False, field=field, **variables)
        if not (text.startswith(through) and through.startswith(before)):
            raise ChatTemplateError(f"{field}: the template does not render conversations prefix by prefix (the "
                                    "prompt for a turn, then the turn), so the assistant tokens cannot be told apart")
        spans.append(range(len(before), len(through.rstrip("\n"))))
    return text, spans


def end_of_turn(template: str | Any, *, field: str = "chat template", **variables: Any) -> str | None:
    """The marker the template writes after an assistant's answer (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`),
    or None when it writes only whitespace there."""
    conversation = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": _ANSWER}]
    text = render_chat(template, conversation, add_generation_prompt=False, field=field, **variables)
    if _ANSWER not in text:
        raise ChatTemplateError(f"{field}: the template does not write the assistant's answer")
    after = text.split(_ANSWER, 1)[1].split()
    return after[0][:64] if after else None


def marker_tokens(template: str | Any, *, field: str = "chat template", **variables: Any) -> list[str]:
    """Special tokens the template writes around turns (`<|im_start|>`, `<|eot_id|>`, `<|end|>`, …) and its
    end-of-turn marker when that is one token: the vocabulary needs each as one special token."""
    text = render_chat(template, PROBE, add_generation_prompt=True, field=field, **variables)
    for message in PROBE:
        text = text.replace(message["content"], " ")
    found = _TURN_MARKER.findall(text)
    marker = end_of_turn(template, field=field, **variables)
    if marker is not None and _TOKEN_LIKE.fullmatch(marker):
        found.append(marker)
    return list(dict.fromkeys(found))


def stop_sequences(user_stops: Sequence[str], template: str | Any, **variables: Any) -> list[str]:
    """The user's stop sequences and the template's end-of-turn marker (generation ends with the turn)."""
    marker = end_of_turn(template, **variables)
    return list(dict.fromkeys([*user_stops, *([marker] if marker else [])]))


def check_template(text: str, field: str) -> None:
    """Refuse a template that does not parse, cannot render a system/user/assistant conversation prefix by prefix
    (needed for assistant-only labels) or writes no answer; one line naming `field`."""
    compiled = compile_template(text, field)
    assistant_spans(compiled, PROBE, field=field, **PROBE_TOKENS)
    end_of_turn(compiled, field=field, **PROBE_TOKENS)


# --- resolution -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedTemplate:
    """The template a run uses, and where it came from."""

    text: str
    source: str  # what was used: base, chatml (also base's fallback), file or inline
    origin: str  # the file, model folder or package it was read from ("inline" for inline)

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "origin": self.origin, "sha256": self.sha256}


def spec_template(spec: ChatTemplateSpec, store_factory: StoreFactory) -> ResolvedTemplate | None:
    """The template of a chatml, file or inline spec, checked; None for base (read from the model by the train
    stage)."""
    if spec.source == "base":
        return None
    if spec.source == "chatml":
        resolved = ResolvedTemplate(chatml_template(), "chatml", f"{TEMPLATE_PACKAGE}/{CHATML_FILE}")
        field = "spec.training.chatTemplate.source"
    elif spec.source == "inline":
        assert spec.inline is not None  # the CEL rules require it
        field = "spec.training.chatTemplate.inline"
        if len(spec.inline.encode("utf-8")) > MAX_TEMPLATE_BYTES:
            raise ChatTemplateError(f"{field}: the template is larger than {MAX_TEMPLATE_BYTES} bytes of UTF-8")
        resolved = ResolvedTemplate(spec.inline, "inline", "inline")
    else:
        assert spec.file is not None
        field = "spec.training.chatTemplate.file"
        resolved = ResolvedTemplate(_decode(read_template_file(spec.file, store_factory), field), "file", spec.file)
    check_template(resolved.text, field)
    return resolved


def read_template_file(uri: str, store_factory: StoreFactory) -> bytes:
    """The bytes of a template file (a local path or s3://bucket/key), at most MAX_TEMPLATE_BYTES."""
    field = "spec.training.chatTemplate.file"
    if uri.startswith("s3://"):
        parent, _, name = uri.rpartition("/")
        data = b""
        try:
            for chunk in store_factory(parent).read_chunks(name, 1 << 16):
                data += chunk
                if len(data) > MAX_TEMPLATE_BYTES:
                    raise ChatTemplateError(f"{field}: {uri} is larger than {MAX_TEMPLATE_BYTES} bytes")
        except (OSError, LookupError) as error:
            raise ChatTemplateError(f"{field}: cannot read {uri}: {_one_line(str(error))}") from None
        return data
    path = local_uri_path(uri)
    if not path.is_absolute() or ".." in path.parts or "\x00" in str(path):
        raise ChatTemplateError(f"{field}: {uri} must be an absolute path without '..'")
    try:
        regular = path.is_file()  # a FIFO or device would block or read forever
    except OSError as error:  # a name too long for the file system: is_file raises rather than answering
        raise ChatTemplateError(f"{field}: cannot read {path}: {error.strerror}") from None
    if not regular:
        raise ChatTemplateError(f"{field}: {path} is not a regular file")
    return _read_at_most(path, MAX_TEMPLATE_BYTES, f"{field}: {path}")


def _read_at_most(path: Path, limit: int, where: str) -> bytes:
    """The file's bytes, or a ChatTemplateError naming `where` when it cannot be read or holds more than `limit`
    (read only that far: no template is that large, and a huge file must not fill memory)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise ChatTemplateError(f"{where}: cannot read: {error.strerror}") from None
    if len(data) > limit:
        raise ChatTemplateError(f"{where}: larger than {limit} bytes, which no chat template is")
    return data


def _decode(data: bytes, field: str) -> str:
    if data.startswith(codecs.BOM_UTF8):  # it would open every prompt the run trains on and the GGUF is asked with
        raise ChatTemplateError(f"{field}: the template starts with a UTF-8 byte order mark (BOM); save it as UTF-8 "
                                "without BOM")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ChatTemplateError(f"{field}: the template is not UTF-8 (byte {error.start})") from None


def model_template(model_dir: Path) -> str | None:
    """A model folder's own template: chat_template.jinja, else tokenizer_config.json's `chat_template` (a string,
    or the entry named `default` of a list of named templates)."""
    jinja = model_dir / MODEL_TEMPLATE_FILE
    if jinja.is_file():
        data = _read_at_most(jinja, MAX_MODEL_TEMPLATE_BYTES, str(jinja))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ChatTemplateError(f"{jinja}: not UTF-8 (byte {error.start})") from None
    config_file = model_dir / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, ValueError) as error:
        raise ChatTemplateError(f"{config_file}: cannot be read as JSON: {_one_line(str(error))}") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def resolve_template(spec: ChatTemplateSpec, model_dir: Path, store_factory: StoreFactory,
                     expected_sha256: str | None = None) -> ResolvedTemplate:
    """The template the train stage uses: the spec's, or the base model's own (ChatML when it has none).
    `expected_sha256`: what the sources step hashed into the keys, for the file source (which can change behind
    its URI)."""
    resolved = spec_template(spec, store_factory)
    if resolved is not None:
        if spec.source == "file" and expected_sha256 is not None and resolved.sha256 != expected_sha256:
            raise ChatTemplateError(f"spec.training.chatTemplate.file: {spec.file} changed since the run's sources "
                                    "were resolved; run again (or set the kubetune.dev/refresh annotation)")
        return resolved
    own = model_template(model_dir)
    if own is None:
        return ResolvedTemplate(chatml_template(), "chatml", f"{TEMPLATE_PACKAGE}/{CHATML_FILE} (the base model "
                                "has no chat template)")
    check_template(own, f"the base model's chat template ({model_dir})")
    return ResolvedTemplate(own, "base", str(model_dir))


def template_digest(spec: ChatTemplateSpec, base_model_digest: str, store_factory: StoreFactory) -> tuple[str, str]:
    """(uri, digest) of the run's template for the stage keys: the sha256 of the resolved text, or for `base` a
    digest of the base model's content digest (its template is part of that content)."""
    resolved = spec_template(spec, store_factory)
    if resolved is None:
        return "base", hashlib.sha256(f"base-model-template {base_model_digest}".encode()).hexdigest()
    return resolved.origin, resolved.sha256
