"""Batched generation: left padding, KV cache, stop at eos or at the template's next section.

``generate_texts`` is the fast path used everywhere; ``generate_one_at_a_time`` reproduces the
authors' released loop (one prompt per ``generate`` call) and exists for the benchmark.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .models import weight_first_output
from .prompts import encode_prompt
from .config import DecodingConfig  # defined with the other settings; still importable from here


class StopAtText:
    """Stops a sequence once its new text contains one of ``stops`` (the template's next section).

    transformers' own ``stop_strings`` builds a table over the whole vocabulary on every
    ``generate`` call: 2-4 s per call with Gemma's 262k tokens, more than generating a batch of
    short answers. Here only the last few new tokens of each sequence are decoded per step. The
    answer is cut at the stop text afterwards either way, so the text returned is the same."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_length: int, tail_tokens: int = 16):
        self.tokenizer, self.stops, self.start, self.tail = tokenizer, list(stops), prompt_length, tail_tokens

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.start:]
        texts = self.tokenizer.batch_decode(new[:, -self.tail:], skip_special_tokens=True)
        return torch.tensor([any(stop in text for stop in self.stops) for text in texts], device=input_ids.device)


def _generate_batch(model, tokenizer, prompts: Sequence[str], decoding: DecodingConfig) -> list[str]:
    from transformers import StoppingCriteriaList

    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": [encode_prompt(tokenizer, p) for p in prompts]}, return_tensors="pt").to(model.device)
    stopping = StoppingCriteriaList([StopAtText(tokenizer, decoding.stop_strings, enc["input_ids"].shape[1])]
                                    if decoding.stop_strings else [])
    with torch.inference_mode(), weight_first_output(model):
        out = model.generate(
            **enc,
            **decoding.generate_kwargs(),
            stopping_criteria=stopping,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new_tokens = out[:, enc["input_ids"].shape[1]:]
    if decoding.skip_special_tokens:
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    else:  # special tokens stay in the text, up to the first eos (what follows it is padding)
        texts = [tokenizer.decode(_through_eos(row.tolist(), tokenizer.eos_token_id)) for row in new_tokens]
    return [cut_at_stop(t, decoding.stop_strings) for t in texts]


def _through_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of ``stops`` that occurs in it (all of it when none does)."""
    for stop in stops:
        if stop in text:
            text = text.split(stop, 1)[0]
    return text


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    decoding: DecodingConfig,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Continue every prompt; returns the generated text only, in input order.

    Prompts are sorted by length so each batch carries little padding, then put back in order.
    ``on_batch(n)`` is called after each batch of ``n`` prompts (for progress bars).
    """
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(encode_prompt(tokenizer, prompts[i])))
    results: list[str | None] = [None] * len(prompts)
    for start in range(0, len(order), decoding.batch_size):
        idx = order[start:start + decoding.batch_size]
        for i, text in zip(idx, _generate_batch(model, tokenizer, [prompts[i] for i in idx], decoding)):
            results[i] = text
        if on_batch:
            on_batch(len(idx))
    return results  # type: ignore[return-value]


def generate_one_at_a_time(model, tokenizer, prompts: Sequence[str], decoding: DecodingConfig) -> list[str]:
    """The baseline the authors' script used: one prompt per ``generate`` call, no padding."""
    model.eval()
    return [_generate_batch(model, tokenizer, [p], decoding)[0] for p in prompts]
