"""spec.training.chatTemplate: which template a run uses, how it is checked, what it adds, and which keys it moves."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import types as t
from kubetune.api.chat_template import MAX_TEMPLATE_BYTES, ChatTemplateSpec
from kubetune.api.validate import InvalidManifest, validate_spec
from kubetune.chat_templates import (
    PROBE_TOKENS,
    ChatTemplateError,
    assistant_spans,
    chatml_template,
    check_template,
    end_of_turn,
    marker_tokens,
    render_chat,
    resolve_template,
    stop_sequences,
)
from kubetune.llama.gguf_reader import read_gguf_header
from kubetune.sources import ResolvedSource, SourceError, Sources, template_source
from kubetune.stages import stage_key
from kubetune.store import Store, open_store
from tests.fixtures.tiny_models import vocab_gguf_path

MODEL = ResolvedSource("/models/tiny", "b" * 64)
# A Llama-3 style template written for these tests (header tokens, <|eot_id|> ends a turn).
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def no_store(uri: str) -> Store:
    raise AssertionError(f"no store expected, asked for {uri}")


def phi3_template() -> str:
    template = read_gguf_header(vocab_gguf_path("llama-bpe").with_name("ggml-vocab-phi-3.gguf")).string(
        "tokenizer.chat_template")
    assert template is not None
    return template


def spec_with(chat_template: dict[str, Any]) -> t.FineTuneRunSpec:
    return t.FineTuneRunSpec.model_validate({"training": {"chatTemplate": chat_template}})


def keys(spec: t.FineTuneRunSpec) -> dict[str, str]:
    sources = Sources(dataset=ResolvedSource("bundled", "a" * 64),
                      template=template_source(spec.training.chat_template, MODEL, no_store), base_model=MODEL)
    upstream = {"dataset": "1" * 64, "train": "2" * 64, "merge": "3" * 64, "convert": "4" * 64}
    return {stage: stage_key(spec, stage, upstream, sources) for stage in ("dataset", "train", "merge", "convert",
                                                                           "evaluate")}


# --- the spec ---------------------------------------------------------------------------------------------------------


def test_the_default_is_the_base_models_own_template() -> None:
    assert t.FineTuneRunSpec().training.chat_template.source == "base"


@pytest.mark.parametrize(("chat_template", "error"), [
    ({"source": "file"}, "spec.training.chatTemplate.file: source file needs file"),
    ({"source": "inline"}, "spec.training.chatTemplate.inline: source inline needs inline"),
    ({"inline": "x"}, "spec.training.chatTemplate.inline: inline applies only to source inline"),
    ({"source": "chatml", "file": "/t.jinja"}, "spec.training.chatTemplate.file: file applies only to source file"),
    ({"source": "file", "file": "/a/../t.jinja"}, "spec.training.chatTemplate.file: must not contain '..'"),
    ({"source": "file", "file": "relative.jinja"}, "spec.training.chatTemplate.file:"),
    ({"source": "other"}, "spec.training.chatTemplate.source:"),
])
def test_the_manifest_is_refused_at_the_field(chat_template: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidManifest) as raised:
        validate_spec({"training": {"chatTemplate": chat_template}})
    errors = [str(e) for e in raised.value.errors]
    assert any(e.startswith(error) for e in errors), errors


# --- checking a template ------------------------------------------------------------------------------------------


def test_a_template_that_does_not_parse_is_one_line_naming_the_field_and_line() -> None:
    with pytest.raises(ChatTemplateError) as raised:
        check_template("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}", "spec.training.chatTemplate.inline")
    assert str(raised.value).startswith("spec.training.chatTemplate.inline: line 2: ")
    assert "\n" not in str(raised.value)


def test_a_template_that_does_not_render_prefix_by_prefix_is_refused() -> None:
    # The answer is written before the question that asked it: no prompt/answer split exists.
    reversed_turns = "{% for m in messages|reverse %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ChatTemplateError, match="does not render conversations prefix by prefix"):
        check_template(reversed_turns, "f")


def test_a_template_that_drops_the_answer_is_refused() -> None:
    with pytest.raises(ChatTemplateError, match="does not write the assistant's answer"):
        check_template("{% for m in messages if m['role'] != 'assistant' %}{{ m['content'] }}{% endfor %}", "f")


@pytest.mark.parametrize("hostile", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.append(1) }}",
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 1000000000 }}",
    "{% set ns = namespace(x='ab') %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "{{ 'x'|center(1000000000) }}",
    "{{ '%999999999s' % 'x' }}",
    "{{ '{:>{}}'.format('x', 999999999) }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
])
def test_a_hostile_template_is_an_error_line_not_an_escape_or_a_hang(hostile: str) -> None:
    with pytest.raises(ChatTemplateError) as raised:
        check_template(hostile, "spec.training.chatTemplate.inline")
    assert str(raised.value).startswith("spec.training.chatTemplate.inline: ")


# --- what a template means ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "marker", "markers"), [
    (chatml_template(), "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    (LLAMA3_STYLE, "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    (phi3_template(), "<|end|>", ["<|user|>", "<|end|>", "<|assistant|>"]),
])
def test_the_end_of_turn_marker_and_turn_tokens_come_from_the_template(template: str, marker: str,
                                                                       markers: list[str]) -> None:
    assert end_of_turn(template, **PROBE_TOKENS) == marker
    assert marker_tokens(template, **PROBE_TOKENS) == markers
    assert stop_sequences(["</output>"], template, **PROBE_TOKENS) == ["</output>", marker]


def test_the_learned_span_of_a_non_chatml_template_is_the_answer_and_its_end_of_turn() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text, spans = assistant_spans(LLAMA3_STYLE, messages, bos_token="<|begin_of_text|>")
    assert [text[span.start:span.stop] for span in spans] == ["Hello<|eot_id|>"]
    assert text.startswith("<|begin_of_text|><|start_header_id|>user")


def test_rendering_matches_the_transformers_renderer_for_real_templates() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"}]
    for template in (chatml_template(), LLAMA3_STYLE, phi3_template()):
        ours = render_chat(template, messages, add_generation_prompt=False, bos_token="<s>", eos_token="</s>")
        rendered = render_jinja_template(conversations=[messages], chat_template=template, bos_token="<s>",
                                         eos_token="</s>")
        assert ours == rendered[0][0]


# --- resolution and keys ------------------------------------------------------------------------------------------


def test_base_uses_the_models_own_template_and_falls_back_to_chatml(tmp_path: Path) -> None:
    own, bare = tmp_path / "own", tmp_path / "bare"
    own.mkdir()
    bare.mkdir()
    (own / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA3_STYLE}))
    (bare / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    resolved = resolve_template(ChatTemplateSpec(), own, no_store)
    assert (resolved.source, resolved.text) == ("base", LLAMA3_STYLE)
    fallback = resolve_template(ChatTemplateSpec(), bare, no_store)
    assert (fallback.source, fallback.text) == ("chatml", chatml_template())


def test_file_templates_are_read_locally_or_from_s3_and_bounded(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "templates").mkdir(parents=True)
    (bucket / "templates" / "phi3.jinja").write_text(phi3_template())
    local = template_source(ChatTemplateSpec(source="file", file=str(bucket / "templates" / "phi3.jinja")), MODEL,
                            no_store)
    in_store = template_source(ChatTemplateSpec(source="file", file="s3://bucket/templates/phi3.jinja"), MODEL,
                               lambda uri: open_store(str(tmp_path / uri.removeprefix("s3://"))))
    assert local.digest == in_store.digest == hashlib.sha256(phi3_template().encode()).hexdigest()
    (bucket / "big.jinja").write_text("x" * (MAX_TEMPLATE_BYTES + 1))
    with pytest.raises(SourceError, match=r"^spec\.training\.chatTemplate\.file: .*big\.jinja: larger than"):
        template_source(ChatTemplateSpec(source="file", file=str(bucket / "big.jinja")), MODEL, no_store)
    os.mkfifo(bucket / "fifo")
    with pytest.raises(SourceError, match="is not a regular file"):
        template_source(ChatTemplateSpec(source="file", file=str(bucket / "fifo")), MODEL, no_store)


def test_a_file_changed_since_resolution_fails_the_train_stage(tmp_path: Path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text(chatml_template())
    spec = ChatTemplateSpec(source="file", file=str(path))
    digest = template_source(spec, MODEL, no_store).digest
    path.write_text(LLAMA3_STYLE)
    with pytest.raises(ChatTemplateError, match="changed since the run's sources were resolved"):
        resolve_template(spec, tmp_path, no_store, expected_sha256=digest)


def test_the_template_text_moves_exactly_the_train_and_evaluate_keys() -> None:
    first = keys(spec_with({"source": "inline", "inline": LLAMA3_STYLE}))
    edited = keys(spec_with({"source": "inline", "inline": LLAMA3_STYLE.replace("\n\n", "\n")}))
    assert first == keys(spec_with({"source": "inline", "inline": LLAMA3_STYLE}))  # same text, same keys
    assert {stage for stage in first if first[stage] != edited[stage]} == {"train", "evaluate"}
    assert {stage for stage, key in keys(spec_with({"source": "chatml"})).items() if key != first[stage]} == {
        "train", "evaluate"}


def test_the_chatml_digest_is_the_installed_files_and_base_follows_the_model() -> None:
    installed = Path(__file__).resolve().parents[2] / "templates" / "chat_template.jinja"
    chatml = template_source(ChatTemplateSpec(source="chatml"), MODEL, no_store)
    assert chatml.digest == hashlib.sha256(installed.read_bytes()).hexdigest()
    other_model = ResolvedSource("/models/tiny", "c" * 64)
    assert template_source(ChatTemplateSpec(), MODEL, no_store).digest != template_source(
        ChatTemplateSpec(), other_model, no_store).digest


def test_kubetune_run_ends_a_bad_template_with_one_line_and_exit_2(tmp_path: Path) -> None:
    run = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "bad"},
           "spec": {"training": {"chatTemplate": {"source": "inline", "inline": "{% for m in messages %}\n{{ m }"}}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", "run", str(tmp_path / "run.yaml"),
                             "--to-stage", "dataset"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "kubetune: default/bad: spec.training.chatTemplate.inline: line 2: unexpected '}'", lines
    assert "Traceback" not in result.stderr and not (tmp_path / ".kubetune" / "store" / "default").exists()
