"""GGUF checks through llama.cpp: loading, chat generation with our chat template, and agreement with transformers.

The evaluate stage and the CLI use these. Prompts are rendered by kubetune.chat_templates, the renderer training uses
(transformers' `apply_chat_template` settings, bounded), and tokenized as training tokenizes them (BOS by the
vocabulary's rule unless the template writes it), so llama.cpp sees the same tokens the model was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubetune import chat_templates
from kubetune.cpus import usable_cpus

if TYPE_CHECKING:
    from llama_cpp import Llama


def load(
    gguf_path: Path, n_ctx: int = 2048, *, logits_all: bool = False, n_threads: int | None = None, verbose: bool = False
) -> Llama:
    """Open a GGUF on the CPU with llama.cpp, quietly unless `verbose` (llama.cpp's log on stderr). `n_threads`, when
    given, is for single tokens and batches alike; by default llama-cpp-python's split (half the CPUs for single
    tokens, all for batches) of the CPUs this process may use, a pod's CPU limit included (its own counts the node's
    cores)."""
    from llama_cpp import Llama

    cpus = usable_cpus()
    return Llama(
        model_path=str(gguf_path),
        n_ctx=n_ctx,
        logits_all=logits_all,
        n_threads=n_threads if n_threads is not None else max(1, cpus // 2),
        n_threads_batch=n_threads if n_threads is not None else cpus,
        n_gpu_layers=0,
        seed=0,
        verbose=verbose,
    )


def render_chat(
    chat_template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """Render a chat template with the renderer training uses (kubetune.chat_templates: transformers' settings)."""
    return chat_templates.render_chat(chat_template, messages, add_generation_prompt=add_generation_prompt,
                                      **variables)


def gguf_template_variables(llm: Llama) -> dict[str, str]:
    """The BOS and EOS token texts from the GGUF's vocabulary: what training hands the template from the tokenizer."""
    variables: dict[str, str] = {}
    for name, token_id in (("bos_token", llm.token_bos()), ("eos_token", llm.token_eos())):
        if token_id >= 0:
            variables[name] = llm.detokenize([token_id], special=True).decode("utf-8", "replace")
    return variables


def chat_prompt_tokens(llm: Llama, messages: Sequence[Mapping[str, Any]], chat_template: str,
                       **template_variables: Any) -> tuple[str, list[int]]:
    """The rendered prompt and its tokens, as training tokenizes it: BOS added by the vocabulary's rule unless the
    template writes it."""
    variables = {**gguf_template_variables(llm), **template_variables}
    prompt = render_chat(chat_template, messages, add_generation_prompt=True, **variables)
    bos = variables.get("bos_token")
    writes_bos = isinstance(bos, str) and bool(bos) and prompt.startswith(bos)
    return prompt, llm.tokenize(prompt.encode("utf-8"), add_bos=not writes_bos, special=True)


def generate_chat(
    llm: Llama,
    messages: Sequence[Mapping[str, Any]],
    chat_template: str,
    stop: Sequence[str] = (),
    max_tokens: int = 256,
    **template_variables: Any,
) -> str:
    """Greedy answer to `messages`: the rendered prompt is completed as raw text until a stop sequence or the
    template's end-of-turn marker."""
    _, tokens = chat_prompt_tokens(llm, messages, chat_template, **template_variables)
    stops = chat_templates.stop_sequences(stop, chat_template, **gguf_template_variables(llm))
    result = llm.create_completion(
        prompt=tokens,
        max_tokens=max_tokens,
        temperature=0.0,
        top_k=1,
        stop=stops or None,
        stream=False,
    )
    return str(result["choices"][0]["text"])  # type: ignore[index]


@dataclass(frozen=True)
class LogitsAgreement:
    positions: int
    top1_agreement: float  # fraction of positions where both pick the same next token
    mean_kl: float  # mean KL(transformers ‖ llama.cpp) of the next-token distributions, in nats


@dataclass(frozen=True)
class GreedyAgreement:
    new_tokens: int
    matching_prefix: int  # tokens generated identically before the first difference
    hf_text: str
    gguf_text: str

    @property
    def fraction(self) -> float:
        return self.matching_prefix / self.new_tokens if self.new_tokens else 1.0


def _context_for(n_tokens: int) -> int:
    return max(64, -(-n_tokens // 64) * 64)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _hf_model_and_tokenizer(hf_model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_model_dir), dtype=torch.float32)
    model.eval()
    return model, tokenizer


def compare_logits(hf_logits: np.ndarray, gguf_logits: np.ndarray) -> LogitsAgreement:
    """Agreement of two (positions × vocab) logit matrices."""
    if hf_logits.shape != gguf_logits.shape:
        raise ValueError(f"logit shapes differ: transformers {hf_logits.shape}, llama.cpp {gguf_logits.shape}")
    top1 = float(np.mean(hf_logits.argmax(-1) == gguf_logits.argmax(-1)))
    log_p, log_q = _log_softmax(hf_logits), _log_softmax(gguf_logits)
    kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
    return LogitsAgreement(positions=hf_logits.shape[0], top1_agreement=top1, mean_kl=kl)


@dataclass(frozen=True)
class HfReference:
    """transformers' side of both agreement checks, computed once and compared with any number of GGUFs."""

    text_ids: list[int]
    text_logits: np.ndarray  # (len(text_ids) × vocab) next-token logits over the text
    prompt_ids: list[int]
    greedy_ids: list[int]  # greedy continuation of the prompt
    tokenizer: Any

    @property
    def new_tokens(self) -> int:
        return len(self.greedy_ids)


def hf_reference(hf_model_dir: Path, text: str, prompt: str, *, max_new_tokens: int,
                 threads: int | None = None) -> HfReference:
    """Loads the HF model once: its logits over `text` and its greedy continuation of `prompt`. `threads`, when
    given, sets torch's threads for the whole process."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    model, tokenizer = _hf_model_and_tokenizer(hf_model_dir)
    text_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    greedy: list[int] = []
    with torch.no_grad():
        text_logits = model(torch.tensor([text_ids])).logits[0].float().numpy()
        past = None
        step_input = torch.tensor([prompt_ids])
        for _ in range(max_new_tokens):
            output = model(step_input, past_key_values=past, use_cache=True)
            past = output.past_key_values
            next_id = int(output.logits[0, -1].argmax())
            greedy.append(next_id)
            step_input = torch.tensor([[next_id]])
    return HfReference(text_ids, text_logits, prompt_ids, greedy, tokenizer)


def compare_with_reference(gguf_path: Path, reference: HfReference, *,
                           n_threads: int | None = None) -> tuple[LogitsAgreement, GreedyAgreement]:
    """llama.cpp's logits over the reference text and greedy continuation of its prompt (token by token, no early
    stop at EOS), from one load of the GGUF; `n_threads` as for `load`."""
    ids, prompt = reference.text_ids, reference.prompt_ids
    # logits_all keeps a (n_ctx × vocab) array: size the context to the longer of the two passes.
    llm = load(gguf_path, n_ctx=_context_for(max(len(ids), len(prompt) + reference.new_tokens)), logits_all=True,
               n_threads=n_threads)
    gguf_new: list[int] = []
    try:
        llm.eval(ids)
        gguf_logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
        if reference.new_tokens:
            llm.reset()
            llm.eval(prompt)
            for _ in range(reference.new_tokens):
                next_id = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                gguf_new.append(next_id)
                llm.eval([next_id])
    finally:
        llm.close()
    hf_new = reference.greedy_ids
    matching = next((i for i, (a, b) in enumerate(zip(hf_new, gguf_new, strict=True)) if a != b), len(hf_new))
    greedy = GreedyAgreement(
        new_tokens=len(hf_new),
        matching_prefix=matching,
        hf_text=reference.tokenizer.decode(hf_new),
        gguf_text=reference.tokenizer.decode(gguf_new),
    )
    return compare_logits(reference.text_logits, gguf_logits), greedy


def logits_agreement(gguf_path: Path, hf_model_dir: Path, text: str) -> LogitsAgreement:
    """Next-token distributions of llama.cpp (GGUF) and transformers (HF folder) over the tokens of `text`."""
    return compare_with_reference(gguf_path, hf_reference(hf_model_dir, text, text, max_new_tokens=0))[0]


def greedy_agreement(gguf_path: Path, hf_model_dir: Path, prompt: str, *, max_new_tokens: int = 32) -> GreedyAgreement:
    """Greedy continuations of `prompt` by transformers and by llama.cpp, token by token (no early stop at EOS)."""
    reference = hf_reference(hf_model_dir, prompt, prompt, max_new_tokens=max_new_tokens)
    return compare_with_reference(gguf_path, reference)[1]
