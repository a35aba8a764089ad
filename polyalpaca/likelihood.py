"""A quality score that does not depend on decoding: how likely each model finds the human
reference answer to a test prompt.

For a prompt ``p`` (put in the Alpaca template) and a reference answer ``r``, the model's
log-probability of ``r`` given ``p`` is summed over the answer's tokens only, with the exact
softmax over the full vocabulary (no subset, no sampling). Two scores come from it:

- **NLL per byte** = -log P(r | p) / (UTF-8 bytes of r): lower is better. Dividing by bytes, not
  tokens, makes models with different tokenizers and languages with different token lengths
  comparable, and a model gains nothing from a tokenizer that splits text finely.
- **language log-odds** = log P(r_L | p_L) - log P(r_en | p_L): for a prompt in language L,
  how much more the model expects the reference in L than the English reference to the same
  prompt (our test prompts are parallel, so both exist). Higher = more inclined to answer in the
  prompt's language; it is 0 by construction for English prompts, which are therefore left out.

Only positions whose next token belongs to the answer go through the LM head, so the 262k-way
head of Gemma costs nothing for the prompt. References are cut at ``max_answer_tokens`` tokens;
the bytes counted are those of the tokens kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .prompts import PromptTemplate


@dataclass(frozen=True)
class AnswerLikelihood:
    logprob: float  # sum over the answer's tokens, nats
    tokens: int
    bytes: int

    @property
    def nll_per_byte(self) -> float:
        return -self.logprob / self.bytes if self.bytes else float("nan")


def _encode(tokenizer, template: PromptTemplate, prompt: str, answer: str, max_answer_tokens: int):
    prompt_ids = tokenizer(template.build(prompt), add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]
    kept = tokenizer.decode(answer_ids, skip_special_tokens=True)
    return prompt_ids, answer_ids, len(kept.encode("utf-8"))


def _head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each hidden state, with the exact softmax over the whole vocabulary."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]


@torch.inference_mode()
def answer_likelihoods(model, tokenizer, template: PromptTemplate, pairs: Sequence[tuple[str, str]],
                       batch_size: int = 8, max_answer_tokens: int = 64,
                       on_batch: Callable[[int], None] | None = None) -> list[AnswerLikelihood]:
    """log P(answer | template(prompt)) for every (prompt, answer) pair, in input order."""
    model.eval()
    encoded = [_encode(tokenizer, template, p, a, max_answer_tokens) for p, a in pairs]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    out: list[AnswerLikelihood | None] = [None] * len(encoded)
    backbone = model.base_model
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [encoded[i][0] + encoded[i][1] for i in idx]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):  # right padding: positions of real tokens are 0..len-1
            ids[j, :len(row)] = torch.tensor(row)
            mask[j, :len(row)] = 1
        hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        # The hidden state at position t predicts token t+1: answer token k of row j is predicted
        # at position len(prompt) - 1 + k.
        select_rows, select_pos, targets, owner = [], [], [], []
        for j, i in enumerate(idx):
            n_prompt, answer = len(encoded[i][0]), encoded[i][1]
            for k, token in enumerate(answer):
                select_rows.append(j)
                select_pos.append(n_prompt - 1 + k)
                targets.append(token)
                owner.append(j)
        if targets:
            h = hidden[torch.tensor(select_rows), torch.tensor(select_pos)]
            logp = _head_logprobs(model, h, torch.tensor(targets, device=device)).cpu().double()
            sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, torch.tensor(owner), logp)
        else:
            sums = torch.zeros(len(idx), dtype=torch.float64)
        for j, i in enumerate(idx):
            out[i] = AnswerLikelihood(float(sums[j]), len(encoded[i][1]), encoded[i][2])
        if on_batch:
            on_batch(len(idx))
    return out  # type: ignore[return-value]
