"""What the publish stage writes besides the registry push: the Ollama Modelfile (the run's chat template in Ollama's
Go-template syntax) and the Hugging Face model card.

Ollama cannot run a Jinja template, so the TEMPLATE is derived: the run's template is rendered with probe messages
and must produce exactly ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n` per turn, `<|im_start|>assistant\\n` to
answer), with or without a default system prompt; such a template has one Go-template equivalent. Any other
template is refused with what to do, never translated by guess.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from kubetune.api.publish import HuggingFacePublishSpec, OllamaPublishSpec
from kubetune.jobs.errors import ConfigError
from kubetune.llama.checks import render_chat

# Probe texts no real template contains: where they land in the rendering shows the template's structure.
_PROBE = {"system": "KT-PROBE-SYSTEM", "user": "KT-PROBE-USER", "assistant": "KT-PROBE-ASSISTANT",
          "again": "KT-PROBE-USER-AGAIN"}

OLLAMA_CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}{{ end }}<|im_start|>assistant\n"
)


def _chatml_turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


@dataclass(frozen=True)
class OllamaTemplate:
    template: str
    default_system: str | None  # the system prompt the Jinja template adds when the chat has none


def ollama_template(chat_template: str) -> OllamaTemplate:
    """The Go-template TEMPLATE equivalent to `chat_template`; ConfigError when it is not ChatML-style."""
    full = [{"role": "system", "content": _PROBE["system"]}, {"role": "user", "content": _PROBE["user"]},
            {"role": "assistant", "content": _PROBE["assistant"]}, {"role": "user", "content": _PROBE["again"]}]
    try:
        with_system = render_chat(chat_template, full, add_generation_prompt=True, bos_token="", eos_token="")
        without = render_chat(chat_template, full[1:2], add_generation_prompt=True, bos_token="", eos_token="")
    except (TemplateError, ValueError, TypeError) as error:  # raise_exception raises ValueError
        raise ConfigError(f"spec.publish.ollama: the run's chat template does not render ({error}); drop "
                          "spec.publish.ollama or fix the template") from None
    expected = "".join(_chatml_turn(m["role"], m["content"]) for m in full) + "<|im_start|>assistant\n"
    answer = _chatml_turn("user", _PROBE["user"]) + "<|im_start|>assistant\n"
    default_system: str | None = None
    if without != answer and without.endswith(answer) and without.startswith("<|im_start|>system\n"):
        head = without[: -len(answer)]
        default_system = head[len("<|im_start|>system\n"): -len("<|im_end|>\n")]
        if _chatml_turn("system", default_system) != head:
            default_system = None
            without = ""
    if with_system != expected or (without != answer and default_system is None):
        raise ConfigError("spec.publish.ollama: the run's chat template is not ChatML-style (<|im_start|>role … "
                          "<|im_end|>), so no Ollama TEMPLATE can be derived from it safely; drop spec.publish.ollama "
                          "or write the Modelfile by hand")
    return OllamaTemplate(OLLAMA_CHATML_TEMPLATE, default_system)


def _quoted(value: str, what: str) -> str:
    if '"' in value or "\n" in value or "\\" in value:
        raise ConfigError(f"{what} {value!r} cannot be written into a Modelfile (it holds a quote, backslash or "
                          "newline)")
    return f'"{value}"'


def _triple_quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise ConfigError(f"{what} holds '\"\"\"', which ends a Modelfile block: it cannot be written there")
    return f'"""{value}"""'


def modelfile(gguf_name: str, template: OllamaTemplate, stop_sequences: Sequence[str],
              spec: OllamaPublishSpec) -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE, SYSTEM (the spec's, else the template's default),
    a PARAMETER stop per stop sequence and ChatML's end of turn, then the spec's parameters."""
    lines = [f"FROM ./{gguf_name}", f"TEMPLATE {_triple_quoted(template.template, 'the template')}"]
    system = spec.system if spec.system is not None else template.default_system
    if system is not None:
        lines.append(f"SYSTEM {_triple_quoted(system, 'spec.publish.ollama.system')}")
    stops = list(dict.fromkeys([*stop_sequences, "<|im_end|>"]))
    lines += [f"PARAMETER stop {_quoted(stop, 'stop sequence')}" for stop in stops]
    lines += [f"PARAMETER {name} {value}" for name, value in sorted(spec.parameters.items())]
    return "\n".join(lines) + "\n"


def model_card(spec: HuggingFacePublishSpec, *, base_model: str | None, ggufs: Sequence[Mapping[str, Any]],
               lineage: Mapping[str, Any], evaluation: str | None, has_modelfile: bool) -> str:
    """README.md with YAML front matter (base_model, tags, license, quantizations) and how to run the GGUFs."""
    types = [str(g["type"]) for g in ggufs]
    tags = list(dict.fromkeys(["gguf", "kubetune", "llama.cpp", *types, *spec.tags]))
    front: dict[str, Any] = {}
    if base_model:
        front["base_model"] = base_model
    if spec.license:
        front["license"] = spec.license
    front["tags"] = tags
    front["quantization"] = types
    title = spec.repo_id or str(lineage.get("run", "kubetune model"))
    first = str(ggufs[0]["name"])
    # JSON scalars are valid YAML: the front matter needs no YAML writer and quotes what must be quoted.
    header = "\n".join(f"{key}: {json.dumps(value)}" for key, value in front.items())
    files = "\n".join(f"| `{g['name']}` | {g['type']} | {g['size']:,} | `{str(g['sha256'])[:16]}…` |" for g in ggufs)
    stages = lineage.get("stages") or {}
    lineage_rows = "\n".join(
        f"| {name} | `{str(info.get('inputKey', ''))[:16]}` | `{str(info.get('outputDigest', ''))[:16]}` |"
        for name, info in stages.items() if isinstance(info, Mapping))
    repo = spec.repo_id or "<org>/<name>"
    ollama = ("ollama create my-model -f Modelfile   # the Modelfile published beside this folder\n"
              if has_modelfile else "")
    return f"""---
{header}
---

# {title}

Fine-tuned{f' from `{base_model}`' if base_model else ''} with kubetune; GGUF files for llama.cpp and Ollama.

| file | type | bytes | sha256 |
| --- | --- | --- | --- |
{files}

## Run it

```sh
huggingface-cli download {repo} {first} --local-dir .
llama-cli -m {first} -cnv
{ollama}```

## Lineage

Run `{lineage.get('run', '')}`; every stage's input key and output digest (content addresses: the same key always
made the same output).

| stage | input key | output digest |
| --- | --- | --- |
{lineage_rows}
{f'''
## Evaluation

{evaluation}
''' if evaluation else ''}"""
