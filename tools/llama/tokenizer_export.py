"""The tokenizer of a Hugging Face folder as llama.cpp vocabulary metadata.

Three tokenizer kinds are supported:

- byte-level BPE from `tokenizer.json` (Llama 3, Qwen2/3/3.5, SmolLM, DeepSeek-LLM/Coder, GPT-2 style)
  → `tokenizer.ggml.model = gpt2` with tokens, token types, merges and the pre-tokenizer name llama.cpp uses to pick
  its splitting regexes. The name
  is derived from the tokenizer's own pre-tokenizer definition; one we do not recognise is an error, because
  llama.cpp would otherwise tokenize with the wrong regex and the model would silently degrade.
- SentencePiece from `tokenizer.model` (Llama 2, Mistral v0.1, Phi-3, Gemma 2/3) → `tokenizer.ggml.model = llama`
  with scores, token types and byte tokens.
- SentencePiece-style BPE from `tokenizer.json` alone (Gemma 4, and any Gemma folder saved without `tokenizer.model`):
  a byte-fallback BPE over text whose spaces the normalizer turns into ▁, with no prefix space → llama.cpp's
  `tokenizer.ggml.model = gemma4` with tokens, token types (`<0xXX>` byte tokens) and merges.

Vocabulary size: the GGUF vocabulary must have exactly one entry per embedding row. Hugging Face models often pad the
embedding beyond the tokenizer (Qwen2.5 pads 151665 tokens to 152064 rows); those rows become `[PAD<id>]` tokens of
type UNUSED, which llama.cpp never produces. A tokenizer with a token id at or past the embedding's row count is a
real mismatch and an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, SpecialVocab, TokenType

from .errors import ConversionError
from .files import open_regular_file, read_json_object, short_repr

TOKENIZER_HINT = "; re-save the tokenizer with transformers' save_pretrained"
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# The Split regexes of known byte-level tokenizers → llama.cpp pre-tokenizer names.
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# Qwen3.5 also keeps combining marks (\p{M}) with the letters they follow.
QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
SPLIT_REGEX_PRE_TOKENIZERS = {QWEN2_REGEX: "qwen2", LLAMA3_REGEX: "llama-bpe", QWEN35_REGEX: "qwen35"}


def _isolated_splits(*regexes: str) -> list[dict[str, Any]]:
    return [{"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False} for r in regexes]


_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# Unicode's cased letters as DeepSeek-LLM lists them; escaped where a character has a canonical singleton
# decomposition (Kelvin sign, Ohm sign, ...), which editors and normalizers silently replace.
_DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"
)
_BYTE_LEVEL_PLAIN = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
# Multi-step pre-tokenizers of known tokenizers (as simplified by _simplify) → llama.cpp pre-tokenizer names.
SEQUENCE_PRE_TOKENIZERS: list[tuple[list[dict[str, Any]], str]] = [
    (
        _isolated_splits("[\r\n]", _DEEPSEEK_LLM_LETTERS, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", _CJK_HANGUL)
        + [{"type": "Digits", "individual_digits": False}, _BYTE_LEVEL_PLAIN],
        "deepseek-llm",
    ),
    (
        _isolated_splits("[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", _CJK_HANGUL)
        + [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL_PLAIN],
        "deepseek-coder",
    ),
]


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SentencePiece) or "gemma4" (▁ BPE)
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


# Real pre-tokenizers nest a few levels (a Sequence of splits); the bound does not depend on the recursion limit,
# which another library in the process may have raised.
MAX_PRE_TOKENIZER_DEPTH = 64


def _simplify(component: Any, depth: int = 0) -> Any:
    """A pre-tokenizer definition without the keys that do not change how text is split."""
    if depth > MAX_PRE_TOKENIZER_DEPTH:
        raise RecursionError
    if isinstance(component, dict):
        return {key: _simplify(value, depth + 1) for key, value in component.items() if key not in ("trim_offsets",)}
    if isinstance(component, list):
        return [_simplify(value, depth + 1) for value in component]
    return component


def _describe(pre_tokenizer: Any) -> str:
    text = json.dumps(pre_tokenizer, ensure_ascii=False)
    return text if len(text) <= 400 else text[:400] + "…"


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE `tokenizer.json`, from its pre-tokenizer definition."""
    try:
        pre = _simplify(tokenizer_json.get("pre_tokenizer"))
    except RecursionError:
        raise ConversionError(f"unknown pre-tokenizer: nested too deeply to be one{TOKENIZER_HINT}") from None
    byte_level_regex = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    byte_level_plain = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    if pre == byte_level_regex:
        return "gpt-2"
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if steps == [{"type": "Digits", "individual_digits": True}, byte_level_regex]:
        return "smollm"
    for known_steps, name in SEQUENCE_PRE_TOKENIZERS:
        if steps == known_steps:
            return name
    if (isinstance(steps, list) and len(steps) == 2 and steps[1] == byte_level_plain
            and isinstance(steps[0], dict) and steps[0].get("type") == "Split"):
        split = steps[0]
        pattern = split.get("pattern")
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if split.get("behavior") == "Isolated" and not split.get("invert") and regex in SPLIT_REGEX_PRE_TOKENIZERS:
            return SPLIT_REGEX_PRE_TOKENIZERS[regex]
        raise ConversionError(
            f"unknown pre-tokenizer: Split regex {short_repr(regex, 200)} (behavior {short_repr(split.get('behavior'))}) "
            "is not one llama.cpp "
            f"is known to implement; known: {', '.join(f'{n} {r!r}' for r, n in SPLIT_REGEX_PRE_TOKENIZERS.items())}"
        )
    raise ConversionError(f"unknown pre-tokenizer {_describe(tokenizer_json.get('pre_tokenizer'))}")


def _is_byte_level(tokenizer_json: dict[str, Any]) -> bool:
    return '"ByteLevel"' in json.dumps(tokenizer_json.get("pre_tokenizer"))


_SPACE_TO_PIECE_NORMALIZER = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
# transformers' GemmaTokenizer splits on spaces, which its normalizer has already replaced: a no-op.
_NO_OP_PRE_TOKENIZERS = (None, {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                                "invert": False})


def _is_sentencepiece_style_bpe(tokenizer_json: dict[str, Any]) -> bool:
    """Gemma's tokenizer.json: byte-fallback BPE over the whole text with spaces as ▁ and no prefix space, which is
    what llama.cpp's `gemma4` tokenizer implements (a Prepend normalizer, as Llama 2's exports have, is not)."""
    model = tokenizer_json.get("model") or {}
    return (
        model.get("byte_fallback") is True
        and tokenizer_json.get("normalizer") == _SPACE_TO_PIECE_NORMALIZER
        and tokenizer_json.get("pre_tokenizer") in _NO_OP_PRE_TOKENIZERS
    )


def _chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | list[dict[str, str]] | None:
    """`chat_template.jinja` when present (newer transformers save it there), else tokenizer_config's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        try:
            with open_regular_file(jinja) as handle:
                return handle.read().decode("utf-8")
        except OSError as exc:
            raise ConversionError(f"{jinja}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConversionError(f"{jinja}: not UTF-8 text (byte {exc.start})") from None
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list) and not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str) for t in template
    ):
        raise ConversionError(f"{model_dir / 'tokenizer_config.json'}: chat_template must be a string or a list of "
                              '{"name": ..., "template": ...} objects')
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
        entries = tokenizer_json.get("added_tokens") or []
        where = model_dir / "tokenizer.json"
        if not isinstance(entries, list) or not all(
            isinstance(t, dict) and _is_token_id(t.get("id")) and isinstance(t.get("content"), str) for t in entries
        ):
            raise ConversionError(f"{where}: added_tokens must be a list of objects with an id (>= 0) and a content "
                                  f"string{TOKENIZER_HINT}")
        return {t["id"]: (t["content"], bool(t.get("special"))) for t in entries}
    legacy = model_dir / "added_tokens.json"
    if legacy.is_file():
        added = read_json_object(legacy)
        if not all(_is_token_id(i) for i in added.values()):
            raise ConversionError(f"{legacy}: expected an object of token text → token id (>= 0){TOKENIZER_HINT}")
        return {i: (content, False) for content, i in added.items()}
    return {}


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _special_vocab(model_dir: Path, n_rows: int, *, load_merges: bool) -> SpecialVocab:
    """Special token ids, add_bos/add_eos and merges via gguf-py; the chat template is ours (see _chat_template)."""
    try:
        special = SpecialVocab(model_dir, load_merges=load_merges, n_vocab=n_rows)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        # gguf-py reads tokenizer.json, tokenizer_config.json and merges.txt itself and trusts their structure.
        raise ConversionError(f"{model_dir}: the tokenizer's special tokens or merges cannot be read "
                              f"({type(exc).__name__}: {short_repr(str(exc), 200)}){TOKENIZER_HINT}") from None
    special.chat_template = None
    _check_text(special.merges, model_dir / "tokenizer.json", "merge")
    return special


def _add_bos_default(special: SpecialVocab, tokenizer_config: dict[str, Any], default: bool) -> None:
    """Make add_bos/add_eos explicit, so that llama.cpp adds exactly what the Hugging Face tokenizer adds."""
    for kind, fallback in (("bos", default), ("eos", False)):
        configured = tokenizer_config.get(f"add_{kind}_token")
        if isinstance(configured, bool):
            special.add_special_token[kind] = configured
        special.add_special_token.setdefault(kind, fallback)


def _bpe_vocab(
    model_dir: Path, tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any], n_rows: int, *, pieces: bool
) -> Vocab:
    """Byte-level BPE (`pieces` False) or SentencePiece-style BPE with `<0xXX>` byte tokens (`pieces` True)."""
    model = tokenizer_json["model"]
    pre = "gemma4" if pieces else pre_tokenizer_name(tokenizer_json)
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab or not all(_is_token_id(i) for i in vocab.values()):
        raise ConversionError(f"{model_dir / 'tokenizer.json'}: model.vocab must be a non-empty object of token text "
                              f"→ token id (>= 0){TOKENIZER_HINT}")
    tokens: dict[int, tuple[str, int]] = {
        i: (text, TokenType.BYTE if pieces and _BYTE_PIECE.fullmatch(str(text)) else TokenType.NORMAL)
        for text, i in vocab.items()
    }
    for token_id, (content, is_special) in _added_tokens(tokenizer_json, model_dir).items():
        tokens[token_id] = (content, TokenType.CONTROL if is_special else TokenType.USER_DEFINED)
    texts, types = _padded(tokens, n_rows)
    _check_text(texts, model_dir / "tokenizer.json", "token")
    special = _special_vocab(model_dir, n_rows, load_merges=True)
    if not special.merges:
        raise ConversionError("tokenizer.json has a BPE model without merges")
    # Gemma adds BOS (llama.cpp forces it for gemma4 vocabularies); byte-level BPE only when its config says so.
    _add_bos_default(special, tokenizer_config, default=pieces)
    model_name = "gemma4" if pieces else "gpt2"
    return Vocab(model_name, pre, texts, types, None, special, _chat_template(model_dir, tokenizer_config))


def _sentencepiece_vocab(
    model_dir: Path, tokenizer_json: dict[str, Any] | None, tokenizer_config: dict[str, Any], n_rows: int
) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(model_dir / "tokenizer.model"))
    except (OSError, RuntimeError) as exc:
        raise ConversionError(f"{model_dir / 'tokenizer.model'}: not a SentencePiece model ({exc}){TOKENIZER_HINT}") from None
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
    _check_text(texts, model_dir / "tokenizer.model", "token")
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
    tokenizer_config = read_json_object(config_path, TOKENIZER_HINT[2:]) if config_path.is_file() else {}
    tokenizer_json = read_json_object(json_path, TOKENIZER_HINT[2:]) if json_path.is_file() else None
    model = tokenizer_json.get("model", {}) if tokenizer_json is not None else {}
    if not isinstance(model, dict):
        raise ConversionError(f"{json_path}: model must be an object{TOKENIZER_HINT}")
    if tokenizer_json is not None and model.get("type") == "BPE" and _is_byte_level(tokenizer_json):
        vocab = _bpe_vocab(model_dir, tokenizer_json, tokenizer_config, n_rows, pieces=False)
    elif spm_path.is_file():
        vocab = _sentencepiece_vocab(model_dir, tokenizer_json, tokenizer_config, n_rows)
    elif tokenizer_json is not None and model.get("type") == "BPE" and _is_sentencepiece_style_bpe(tokenizer_json):
        vocab = _bpe_vocab(model_dir, tokenizer_json, tokenizer_config, n_rows, pieces=True)
    elif tokenizer_json is not None:
        raise ConversionError(
            f"unsupported tokenizer.json ({short_repr(model.get('type'))} model without a byte-level pre-tokenizer, "
            "nor Gemma's byte-fallback BPE with a space → ▁ normalizer) and no tokenizer.model"
        )
    else:
        raise ConversionError(f"{model_dir}: missing tokenizer files (need tokenizer.json or tokenizer.model)")
    template = vocab.chat_template
    _check_text([template] if isinstance(template, str) else [t["template"] for t in template or []],
                model_dir / "chat_template", "chat template")
    return vocab


def _check_text(texts: list[Any], source: Path, what: str) -> None:
    """GGUF strings are UTF-8: a lone surrogate (JSON allows the escape \\ud800) cannot be written, nor a non-string
    (gguf-py passes a merges list on as it found it)."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConversionError(f"{source}: {what} {index} is {short_repr(text)}, not a string{TOKENIZER_HINT}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConversionError(f"{source}: {what} {index} is not valid Unicode (a lone surrogate such as "
                                  f"\\ud800){TOKENIZER_HINT}") from None
