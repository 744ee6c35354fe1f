"""Answers to eval prompts, rendered with the training chat template and cut at a stop sequence.

Stop sequences are matched on decoded text, not token ids: `</output>` is one token where it was added as a special
token and several elsewhere, and byte-level BPE may merge it with neighbouring characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from kubetune.chat_templates import end_of_turn
from kubetune.jobs.train_data import render, template_variables


class StopOnText(StoppingCriteria):
    """Stops each row once its generated text (after `prompt_length` tokens) contains any stop sequence."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int, stop_sequences: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop_sequences = [stop for stop in stop_sequences if stop]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=False)
        done = [any(stop in text for stop in self.stop_sequences) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def cut_at_stop(text: str, stop_sequences: Sequence[str]) -> str:
    """The text up to and including the earliest stop sequence."""
    ends = [text.index(stop) + len(stop) for stop in stop_sequences if stop and stop in text]
    return text[: min(ends)] if ends else text


@dataclass(frozen=True)
class Generation:
    prompt: str
    answer: str

    def to_json(self) -> dict[str, str]:
        return {"prompt": self.prompt, "answer": self.answer}


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS and the chat template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`, …) where it is one token."""
    template = tokenizer.chat_template
    marker = end_of_turn(template, **template_variables(tokenizer)) if isinstance(template, str) else None
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(marker) if marker else None}
    return sorted(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id)


@torch.no_grad()
# Decoding token by token with a KV cache would only recompile the layers compiled for training: run them eagerly.
@torch.compiler.set_stance("force_eager")
def generate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    stop_sequences: Sequence[str],
    max_new_tokens: int,
    device: torch.device,
) -> list[Generation]:
    """Greedy answers, one prompt at a time (no padding effects), with the model's RNG streams untouched."""
    was_training = model.training
    model.eval()
    answers: list[Generation] = []
    stop_ids = end_of_turn_ids(tokenizer)
    try:
        for prompt in prompts:
            text = render(tokenizer, [{"role": "user", "content": prompt}], generation_prompt=True)
            bos = tokenizer.bos_token  # a template that writes it gets no second one (as in training)
            input_ids = tokenizer(text, add_special_tokens=not (isinstance(bos, str) and text.startswith(bos)),
                                  return_tensors="pt")["input_ids"].to(device)
            output = model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                eos_token_id=stop_ids,
                pad_token_id=stop_ids[0] if stop_ids else 0,
                stopping_criteria=StoppingCriteriaList([StopOnText(tokenizer, input_ids.shape[1], stop_sequences)]),
            )
            new_tokens = output[0, input_ids.shape[1] :].tolist()
            while new_tokens and new_tokens[-1] in stop_ids:
                new_tokens.pop()
            # Special tokens stay: an added `</output>` is one and is what the answer is cut at.
            answer = tokenizer.decode(new_tokens, skip_special_tokens=False)
            assert isinstance(answer, str)
            answers.append(Generation(prompt, cut_at_stop(answer, stop_sequences)))
    finally:
        model.train(was_training)
    return answers
