"""The Ollama Modelfile and the Hugging Face model card the publish stage writes.

The Modelfile is parsed back here the way Ollama reads one (an instruction per line, `\"\"\"` blocks across lines,
`"..."` quoted values), and its TEMPLATE is checked by rendering it with a small Go-template evaluator for the few
constructs it uses against the Jinja template it was derived from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.publish import HuggingFacePublishSpec, OllamaPublishSpec
from kubetune.jobs.errors import ConfigError
from kubetune.jobs.publish_formats import model_card, modelfile, ollama_template
from kubetune.llama.checks import render_chat

KUBETUNE_TEMPLATE = (Path(__file__).resolve().parents[2] / "templates" / "chat_template.jinja").read_text()
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(instruction, argument) pairs; a `\"\"\"` argument may span lines, a `"..."` one is unquoted."""
    found: list[tuple[str, str]] = []
    rest = text
    while rest.strip():
        rest = rest.lstrip("\n")
        word, _, rest = rest.partition(" ")
        if word == "PARAMETER":
            name, _, rest = rest.partition(" ")
            value, _, rest = rest.partition("\n")
            found.append((f"PARAMETER {name}", value[1:-1] if value.startswith('"') else value))
        elif rest.startswith('"""'):
            value, _, rest = rest[3:].partition('"""')
            found.append((word, value))
            rest = rest.removeprefix("\n")
        else:
            value, _, rest = rest.partition("\n")
            found.append((word, value))
    return found


def render_go(template: str, system: str | None, messages: list[dict[str, str]]) -> str:
    """Evaluate the Go-template subset the derived TEMPLATE uses: `{{- ...}}` trimming, `if .System`, `range
    .Messages` with `if ne .Role "system"`, `.Role`, `.Content`, `.System`."""
    tokens = re.split(r"(\{\{-?\s*.*?\s*-?\}\})", template)
    for i, token in enumerate(tokens):  # `{{-` and `-}}` trim the template text beside them, as Go does
        if token.startswith("{{-"):
            tokens[i - 1] = tokens[i - 1].rstrip()
        if token.endswith("-}}"):
            tokens[i + 1] = tokens[i + 1].lstrip()
    out: list[str] = []

    def run(index: int, message: dict[str, str] | None, emit: bool) -> int:
        while index < len(tokens):
            token = tokens[index]
            index += 1
            if not token.startswith("{{"):
                if emit:
                    out.append(token)
                continue
            action = token.strip("{}-").strip()
            if action == "end":
                return index
            if action == "if .System":
                index = run(index, message, emit and bool(system))
            elif action == 'if ne .Role "system"':
                index = run(index, message, emit and message is not None and message["role"] != "system")
            elif action == "range .Messages":
                start = index
                for item in messages if emit else []:
                    index = run(start, item, True)
                if not messages or not emit:
                    index = run(start, None, False)
            elif emit:
                value = {".System": system or "", ".Role": (message or {}).get("role", ""),
                         ".Content": (message or {}).get("content", "")}[action]
                out.append(value)
        return index

    run(0, None, True)
    return "".join(out)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "Nova."}, {"role": "user", "content": "And?"}]


@pytest.mark.parametrize("jinja", [KUBETUNE_TEMPLATE, SMOLLM2_TEMPLATE])
def test_the_derived_ollama_template_renders_a_chat_as_the_runs_template_does(jinja: str) -> None:
    derived = ollama_template(jinja)
    expected = render_chat(jinja, CHAT, add_generation_prompt=True)
    assert render_go(derived.template, "Be brief.", CHAT) == expected
    # Without a system message, Ollama's SYSTEM default stands in for the one the Jinja template adds itself.
    no_system = CHAT[1:]
    assert render_go(derived.template, derived.default_system, no_system) == render_chat(
        jinja, no_system, add_generation_prompt=True)


def test_a_template_that_is_not_chatml_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match="not ChatML-style.*drop spec.publish.ollama"):
        ollama_template(LLAMA3_TEMPLATE)
    with pytest.raises(ConfigError, match="does not render"):
        ollama_template("{{ raise_exception('no system role') }}")


def test_the_modelfile_names_the_gguf_template_system_and_every_stop_sequence() -> None:
    spec = OllamaPublishSpec.model_validate({"parameters": {"temperature": "0.2", "num_ctx": "2048"}})
    text = modelfile("model-q8_0.gguf", ollama_template(SMOLLM2_TEMPLATE), ["</output>"], spec)
    parsed = parse_modelfile(text)
    assert parsed[0] == ("FROM", "./model-q8_0.gguf")
    assert ("TEMPLATE", ollama_template(SMOLLM2_TEMPLATE).template) in parsed
    assert ("SYSTEM", "You are a helpful AI assistant named SmolLM, trained by Hugging Face") in parsed
    assert [v for k, v in parsed if k == "PARAMETER stop"] == ["</output>", "<|im_end|>"]
    assert ("PARAMETER temperature", "0.2") in parsed and ("PARAMETER num_ctx", "2048") in parsed


def test_the_specs_system_prompt_replaces_the_templates_default() -> None:
    spec = OllamaPublishSpec.model_validate({"system": "You are Nova."})
    parsed = parse_modelfile(modelfile("m.gguf", ollama_template(SMOLLM2_TEMPLATE), [], spec))
    assert [v for k, v in parsed if k == "SYSTEM"] == ["You are Nova."]


def test_a_stop_sequence_a_modelfile_cannot_quote_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="cannot be written into a Modelfile"):
        modelfile("m.gguf", ollama_template(KUBETUNE_TEMPLATE), ['say "stop"'], OllamaPublishSpec())


GGUFS: list[dict[str, Any]] = [{"name": "model-q8_0.gguf", "type": "q8_0", "size": 1234, "sha256": "ab" * 32},
                               {"name": "model-q4_k_m.gguf", "type": "q4_k_m", "size": 999, "sha256": "cd" * 32}]
LINEAGE = {"run": "team/nova", "stages": {"train": {"inputKey": "1" * 64, "outputDigest": "2" * 64},
                                          "convert": {"inputKey": "3" * 64, "outputDigest": "4" * 64}}}


def test_the_model_card_has_front_matter_files_run_commands_and_lineage() -> None:
    spec = HuggingFacePublishSpec.model_validate({"repoId": "team/nova", "license": "apache-2.0", "tags": ["chat"]})
    card = model_card(spec, base_model="HuggingFaceTB/SmolLM2-135M-Instruct", ggufs=GGUFS, lineage=LINEAGE,
                      evaluation="4/4 prompts passed", has_modelfile=True)
    _, front_text, body = card.split("---\n", 2)
    front = yaml.safe_load(front_text)
    assert front == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0",
                     "tags": ["gguf", "kubetune", "llama.cpp", "q8_0", "q4_k_m", "chat"],
                     "quantization": ["q8_0", "q4_k_m"]}
    assert body.startswith("\n# team/nova\n")
    assert "huggingface-cli download team/nova model-q8_0.gguf" in body and "llama-cli -m model-q8_0.gguf" in body
    assert "ollama create" in body and "4/4 prompts passed" in body
    assert f"| train | `{'1' * 16}` | `{'2' * 16}` |" in body


def test_a_card_claims_no_license_or_base_model_it_does_not_know() -> None:
    card = model_card(HuggingFacePublishSpec(), base_model=None, ggufs=GGUFS[:1], lineage=LINEAGE, evaluation=None,
                      has_modelfile=False)
    front = yaml.safe_load(card.split("---\n", 2)[1])
    assert "license" not in front and "base_model" not in front
    assert "ollama create" not in card and "## Evaluation" not in card
