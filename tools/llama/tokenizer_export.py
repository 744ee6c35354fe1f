"""The tokenizer of a Hugging Face folder as llama.cpp vocabulary metadata.

Two tokenizer kinds are supported:

- byte-level BPE from `tokenizer.json` (Llama 3, Qwen2/3, SmolLM, GPT-2 style) → `tokenizer.ggml.model = gpt2`
  with tokens, token types, merges and the pre-tokenizer name llama.cpp uses to pick its splitting regexes. The name
  is derived from the tokenizer's own pre-tokenizer definition; one we do not recognise is an error, because
  llama.cpp would otherwise tokenize with the wrong regex and the model would silently degrade.
- SentencePiece from `tokenizer.model` (Llama 2, Mistral v0.1) → `tokenizer.ggml.model = llama` with scores,
  token types and byte tokens.

Vocabulary size: the GGUF vocabulary must have exactly one entry per embedding row. Hugging Face models often pad the
embedding beyond the tokenizer (Qwen2.5 pads 151665 tokens to 152064 rows); those rows become `[PAD<id>]` tokens of
type UNUSED, which llama.cpp never produces. A tokenizer with a token id at or past the embedding's row count is a
real mismatch and an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, SpecialVocab, TokenType

from .errors import ConversionError

# The Split regexes of known byte-level tokenizers → llama.cpp pre-tokenizer names.
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLIT_REGEX_PRE_TOKENIZERS = {QWEN2_REGEX: "qwen2", LLAMA3_REGEX: "llama-bpe"}


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None
    special: SpecialVocab
    chat_template: str | list[dict[str, str]] | None

    def add_to_gguf(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        self.special.add_to_gguf(writer, quiet=True)  # merges, special token ids, add_bos/add_eos
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


def _simplify(component: Any) -> Any:
    """A pre-tokenizer definition without the keys that do not change how text is split."""
    if isinstance(component, dict):
        return {key: _simplify(value) for key, value in component.items() if key not in ("trim_offsets",)}
    if isinstance(component, list):
        return [_simplify(value) for value in component]
    return component


def _describe(pre_tokenizer: Any) -> str:
    return json.dumps(pre_tokenizer, ensure_ascii=False)


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE `tokenizer.json`, from its pre-tokenizer definition."""
    pre = _simplify(tokenizer_json.get("pre_tokenizer"))
    byte_level_regex = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    byte_level_plain = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    if pre == byte_level_regex:
        return "gpt-2"
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if steps == [{"type": "Digits", "individual_digits": True}, byte_level_regex]:
        return "smollm"
    if steps and len(steps) == 2 and steps[1] == byte_level_plain and steps[0].get("type") == "Split":
        split = steps[0]
        regex = split.get("pattern", {}).get("Regex")
        if split.get("behavior") == "Isolated" and not split.get("invert") and regex in SPLIT_REGEX_PRE_TOKENIZERS:
            return SPLIT_REGEX_PRE_TOKENIZERS[regex]
        raise ConversionError(
            f"unknown pre-tokenizer: Split regex {regex!r} (behavior {split.get('behavior')}) is not one llama.cpp "
            f"is known to implement; known: {', '.join(f'{n} {r!r}' for r, n in SPLIT_REGEX_PRE_TOKENIZERS.items())}"
        )
    raise ConversionError(f"unknown pre-tokenizer {_describe(tokenizer_json.get('pre_tokenizer'))}")


def _is_byte_level(tokenizer_json: dict[str, Any]) -> bool:
    return '"ByteLevel"' in json.dumps(tokenizer_json.get("pre_tokenizer"))


def _chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | list[dict[str, str]] | None:
    """`chat_template.jinja` when present (newer transformers save it there), else tokenizer_config's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, (str, list)) else None


def _padded(tokens: dict[int, tuple[str, int]], n_rows: int) -> tuple[list[str], list[int]]:
    highest = max(tokens)
    if highest >= n_rows:
        raise ConversionError(
            f"vocabulary size mismatch: the tokenizer has token id {highest} ({len(tokens)} tokens) but the "
            f"embedding has {n_rows} rows"
        )
    texts, types = [], []
    for token_id in range(n_rows):
        text, token_type = tokens.get(token_id, (f"[PAD{token_id}]", TokenType.UNUSED))
        texts.append(text)
        types.append(int(token_type))
    return texts, types


def _added_tokens(tokenizer_json: dict[str, Any] | None, model_dir: Path) -> dict[int, tuple[str, bool]]:
    """Added tokens by id: (content, special)."""
    if tokenizer_json is not None:
        return {
            int(t["id"]): (str(t["content"]), bool(t.get("special"))) for t in tokenizer_json.get("added_tokens", [])
        }
    legacy = model_dir / "added_tokens.json"
    if legacy.is_file():
        return {int(i): (str(content), False) for content, i in json.loads(legacy.read_text()).items()}
    return {}


def _special_vocab(model_dir: Path, n_rows: int, *, load_merges: bool) -> SpecialVocab:
    """Special token ids, add_bos/add_eos and merges via gguf-py; the chat template is ours (see _chat_template)."""
    special = SpecialVocab(model_dir, load_merges=load_merges, n_vocab=n_rows)
    special.chat_template = None
    return special


def _add_bos_default(special: SpecialVocab, tokenizer_config: dict[str, Any], default: bool) -> None:
    """Make add_bos/add_eos explicit, so that llama.cpp adds exactly what the Hugging Face tokenizer adds."""
    for kind, fallback in (("bos", default), ("eos", False)):
        configured = tokenizer_config.get(f"add_{kind}_token")
        if isinstance(configured, bool):
            special.add_special_token[kind] = configured
        special.add_special_token.setdefault(kind, fallback)


def _bpe_vocab(model_dir: Path, tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any], n_rows: int) -> Vocab:
    model = tokenizer_json.get("model", {})
    pre = pre_tokenizer_name(tokenizer_json)
    tokens: dict[int, tuple[str, int]] = {int(i): (text, TokenType.NORMAL) for text, i in model["vocab"].items()}
    for token_id, (content, is_special) in _added_tokens(tokenizer_json, model_dir).items():
        tokens[token_id] = (content, TokenType.CONTROL if is_special else TokenType.USER_DEFINED)
    texts, types = _padded(tokens, n_rows)
    special = _special_vocab(model_dir, n_rows, load_merges=True)
    if not special.merges:
        raise ConversionError("tokenizer.json has a BPE model without merges")
    _add_bos_default(special, tokenizer_config, default=False)
    return Vocab("gpt2", pre, texts, types, None, special, _chat_template(model_dir, tokenizer_config))


def _sentencepiece_vocab(
    model_dir: Path, tokenizer_json: dict[str, Any] | None, tokenizer_config: dict[str, Any], n_rows: int
) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(model_dir / "tokenizer.model"))
    except (OSError, RuntimeError) as exc:
        raise ConversionError(f"tokenizer.model is not a SentencePiece model: {exc}") from exc
    tokens: dict[int, tuple[str, int]] = {}
    scores: dict[int, float] = {}
    for token_id in range(processor.vocab_size()):
        if processor.IsUnknown(token_id):
            token_type = TokenType.UNKNOWN
        elif processor.IsControl(token_id):
            token_type = TokenType.CONTROL
        elif processor.IsUnused(token_id):
            token_type = TokenType.UNUSED
        elif processor.IsByte(token_id):
            token_type = TokenType.BYTE
        else:
            token_type = TokenType.NORMAL
        tokens[token_id] = (processor.IdToPiece(token_id), token_type)
        scores[token_id] = processor.GetScore(token_id)
    for token_id, (content, is_special) in _added_tokens(tokenizer_json, model_dir).items():
        if token_id >= processor.vocab_size():
            tokens[token_id] = (content, TokenType.CONTROL if is_special else TokenType.USER_DEFINED)
            scores[token_id] = -1000.0
        elif is_special and tokens[token_id][1] == TokenType.NORMAL:
            tokens[token_id] = (content, TokenType.CONTROL)
    texts, types = _padded(tokens, n_rows)
    special = _special_vocab(model_dir, n_rows, load_merges=False)
    _add_bos_default(special, tokenizer_config, default=True)  # SentencePiece Llama tokenizers add BOS by default
    return Vocab(
        "llama",
        "default",
        texts,
        types,
        [scores.get(i, -1000.0) for i in range(n_rows)],
        special,
        _chat_template(model_dir, tokenizer_config),
    )


def load_vocab(model_dir: Path, n_rows: int) -> Vocab:
    """Read the folder's tokenizer for an embedding of `n_rows` rows; raises ConversionError when it cannot."""
    json_path, spm_path, config_path = (
        model_dir / n for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    )
    tokenizer_config: dict[str, Any] = json.loads(config_path.read_text("utf-8")) if config_path.is_file() else {}
    tokenizer_json: dict[str, Any] | None = json.loads(json_path.read_text("utf-8")) if json_path.is_file() else None
    if (
        tokenizer_json is not None
        and tokenizer_json.get("model", {}).get("type") == "BPE"
        and _is_byte_level(tokenizer_json)
    ):
        return _bpe_vocab(model_dir, tokenizer_json, tokenizer_config, n_rows)
    if spm_path.is_file():
        return _sentencepiece_vocab(model_dir, tokenizer_json, tokenizer_config, n_rows)
    if tokenizer_json is not None:
        kind = tokenizer_json.get("model", {}).get("type")
        raise ConversionError(
            f"unsupported tokenizer.json ({kind} model without a byte-level pre-tokenizer) and no tokenizer.model"
        )
    raise ConversionError(f"{model_dir}: missing tokenizer files (need tokenizer.json or tokenizer.model)")
