"""Hostile chat template *files*: `spec.training.chatTemplate.file` and a base model's own `chat_template.jinja` holding
any bytes.

- `kubetune run` checks a file template before any stage: whatever its bytes, the run goes on (here: to its
  suspension) or ends in one line naming `spec.training.chatTemplate.file` and exit 2. A template saved with a UTF-8
  byte order mark is refused: it was taken whole, so U+FEFF opened every prompt the run trained on and the GGUF
  was asked with.
- The train stage reads a `base` template from the model folder: a `chat_template.jinja` that is not UTF-8 (or is
  huge) is a ChatTemplateError naming the file, as a tokenizer_config.json that is not JSON already was; it was a
  bare UnicodeDecodeError (exit 1, retried).
"""

from __future__ import annotations

import codecs
import contextlib
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kubetune.api.chat_template import ChatTemplateSpec
from kubetune.chat_templates import MAX_MODEL_TEMPLATE_BYTES, ChatTemplateError, resolve_template
from kubetune.store import open_store
from tests.property.cli_inputs import kubetune, manifest, write_sources
from tests.property.test_dataset_hostile import scratch

FIELD = "spec.training.chatTemplate.file"
WORKING = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}" \
          "{% if add_generation_prompt %}<|assistant|>{% endif %}"
template_bytes = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda text: text.encode("utf-8")),
    st.sampled_from([b"", WORKING.encode(), codecs.BOM_UTF8 + WORKING.encode(), WORKING.encode() + b"\xff",
                     codecs.BOM_UTF16_LE + WORKING.encode("utf-16-le"), WORKING.encode() + b"\x00"]),
    st.binary(max_size=40).map(lambda junk: WORKING.encode() + junk),
)


@given(template_bytes)
def test_any_template_file_is_taken_or_one_line_naming_the_field(data: bytes) -> None:
    with scratch() as root, contextlib.chdir(root):
        write_sources(root)
        (root / "template.jinja").write_bytes(data)
        doc = json.loads(manifest("tree"))
        doc["spec"]["suspend"] = True  # sources resolved (the template checked), then nothing runs
        (root / "run.yaml").write_text(json.dumps(doc), encoding="utf-8")
        code, err = kubetune("run", "run.yaml", "--store", "store")
    lines = [line for line in err if not line.startswith("kubetune: running ")]
    assert len(lines) == 1, err
    if code == 0:
        assert not data.startswith(codecs.BOM_UTF8) and "is suspended" in lines[0], err
    else:
        assert code == 2 and lines[0].startswith(f"kubetune: default/hostile: {FIELD}: "), err
    if data.startswith(codecs.BOM_UTF8):
        assert "byte order mark" in lines[0], err


@given(st.one_of(template_bytes, st.just(b" " * (MAX_MODEL_TEMPLATE_BYTES + 1))))
def test_a_base_models_own_template_of_any_bytes_is_taken_or_an_error_naming_the_file(data: bytes) -> None:
    with scratch() as model:
        (model / "chat_template.jinja").write_bytes(data)
        try:
            resolved = resolve_template(ChatTemplateSpec(source="base"), model, open_store)
        except ChatTemplateError as error:
            message = str(error)
            assert message.startswith((f"{model / 'chat_template.jinja'}: ", f"the base model's chat template ({model})")
                                      ), message
            assert "\n" not in message
            return
    assert resolved.text == data.decode("utf-8") or resolved.source == "chatml"


def test_a_base_template_that_is_not_utf8_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_bytes(b"\xff" + WORKING.encode())
    try:
        resolve_template(ChatTemplateSpec(source="base"), tmp_path, open_store)
    except ChatTemplateError as error:
        assert str(error) == f"{tmp_path / 'chat_template.jinja'}: not UTF-8 (byte 0)"
    else:
        raise AssertionError("a template that is not UTF-8 was taken")
