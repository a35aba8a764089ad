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
head of Gemma costs nothing for the prompt. What is scored is chosen by content, not by tokens:
``first_sentences`` keeps a reference's first N complete sentences, the same content in every
language of a parallel set (a token budget would keep about 4 bytes a token of English but 7-8 of
Russian, so "per byte" would not cover the same words). ``max_answer_tokens`` is only a safety cap;
the bytes counted are those of the tokens kept.

Shared work is done once, with the model's key/value cache: the template's preamble, common to
every prompt, is run once for all pairs, and each distinct prompt is run once for all the answers
scored after it (the reference in the prompt's language and the English one). The sums are those of
one full forward pass per pair, up to float rounding. ``likelihood_work`` counts the tokens that
go through the model's layers and through its head, which the time estimate of ``polyalpaca plan``
uses.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

from .models import vocabulary_first_logits
from .prompts import PromptTemplate, encode_prompt


@dataclass(frozen=True)
class AnswerLikelihood:
    logprob: float  # sum over the answer's tokens, nats
    tokens: int
    bytes: int

    @property
    def nll_per_byte(self) -> float:
        return -self.logprob / self.bytes if self.bytes else float("nan")


def first_sentences(text: str, n: int) -> str:
    """The first ``n`` complete sentences of ``text`` (all of it when ``n`` is 0 or the text has
    fewer): a sentence ends at . ! ? or their CJK forms followed by a space, a line break or the end."""
    text = text.strip()
    if n <= 0:
        return text
    ends = [m.end() for m in re.finditer(r"[.!?。！？](?=\s|$)|[。！？]", text)]
    return text[:ends[n - 1]].strip() if len(ends) >= n else text


def _encode(tokenizer, template: PromptTemplate, prompt: str, answer: str, max_answer_tokens: int):
    prompt_ids = encode_prompt(tokenizer, template.build(prompt))
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]
    kept = tokenizer.decode(answer_ids, skip_special_tokens=True)
    return prompt_ids, answer_ids, len(kept.encode("utf-8"))


def _head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each hidden state, with the exact softmax over the whole vocabulary. On a
    CPU the logits are computed vocabulary first (V x n, ``models.vocabulary_first_logits``, the
    faster product there) and normalised over the vocabulary axis without transposing them back."""
    layer = model.get_output_embeddings()
    if hidden.device.type == "cpu" and isinstance(layer, torch.nn.Linear):
        logits, vocab_axis = vocabulary_first_logits(layer, hidden).float(), 0  # V x n
    else:
        logits, vocab_axis = layer(hidden).float(), -1
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    columns = torch.arange(len(targets), device=targets.device)
    picked = logits[targets, columns] if vocab_axis == 0 else logits[columns, targets]
    return picked - torch.logsumexp(logits, vocab_axis)


def _shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix common to every prompt, leaving at least one token of each
    (the last prompt position predicts the answer's first token)."""
    if not prompts:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return max(n, 0)


class LikelihoodWork(NamedTuple):
    """What scoring a set of pairs costs: tokens run through the model's layers, and tokens scored
    through the full-vocabulary LM head (on a 270M Gemma the head costs more than the layers)."""

    model_tokens: int
    scored_tokens: int


def likelihood_work(tokenizer, template: PromptTemplate, pairs: Sequence[tuple[str, str]],
                    max_answer_tokens: int) -> LikelihoodWork:
    """The work ``answer_likelihoods`` does for ``pairs``: the shared preamble once, each distinct
    prompt's remainder once, every answer but its last token; and every answer token scored."""
    encoded = [_encode(tokenizer, template, p, a, max_answer_tokens) for p, a in pairs]
    prompts = list(dict.fromkeys(tuple(e[0]) for e in encoded))
    shared = _shared_prefix(prompts)
    model = shared + sum(len(p) - shared for p in prompts) + sum(max(len(e[1]) - 1, 0) for e in encoded)
    return LikelihoodWork(model, sum(len(e[1]) for e in encoded))


def _padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their mask (positions of real tokens are 0..len-1)."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        ids[j, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[j, :len(row)] = 1
    return ids, mask


@torch.inference_mode()
def answer_likelihoods(model, tokenizer, template: PromptTemplate, pairs: Sequence[tuple[str, str]],
                       batch_size: int = 8, max_answer_tokens: int = 64,
                       on_batch: Callable[[int], None] | None = None) -> list[AnswerLikelihood]:
    """log P(answer | template(prompt)) for every (prompt, answer) pair, in input order.
    ``batch_size`` distinct prompts go through the model at once, with all their answers."""
    model.eval()
    encoded = [_encode(tokenizer, template, p, a, max_answer_tokens) for p, a in pairs]
    groups: dict[tuple[int, ...], list[int]] = {}  # distinct prompt -> the pairs scored after it
    for i, (prompt_ids, _, _) in enumerate(encoded):
        groups.setdefault(tuple(prompt_ids), []).append(i)
    prompts = sorted(groups, key=len)
    shared = _shared_prefix(prompts)
    backbone = model.base_model
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prefix_cache = None
    if shared:
        prefix_cache = backbone(input_ids=torch.tensor([prompts[0][:shared]], device=device),
                                use_cache=True).cache
    sums = [0.0] * len(encoded)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        # 1. The prompts' remainders, after the cached preamble.
        ids, mask = _padded([p[shared:] for p in batch], pad)
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
        prompt_mask = torch.cat([torch.ones((len(batch), shared), dtype=torch.long), mask], 1)
        out = backbone(input_ids=ids.to(device), attention_mask=prompt_mask.to(device),
                       position_ids=(shared + torch.arange(ids.shape[1]))[None].expand(len(batch), -1).to(device),
                       cache=cache, use_cache=True)
        cache, hidden = out.cache, out.last_hidden_state
        # 2. Every answer of these prompts, each row attending to its own prompt in the cache. The
        # hidden state at a position predicts the next token: the prompt's last position predicts
        # the answer's first token, answer token k predicts token k + 1.
        rows = [(j, i) for j, p in enumerate(batch) for i in groups[p]]
        answers = [encoded[i][1] for _, i in rows]
        owner = torch.tensor([j for j, _ in rows])
        first = hidden[owner, torch.tensor([len(batch[j]) - shared - 1 for j, _ in rows])]
        cache.batch_select_indices(owner.to(device))
        a_ids, a_mask = _padded([a[:-1] for a in answers], pad)
        lengths = torch.tensor([len(batch[j]) for j, _ in rows])
        a_out = backbone(input_ids=a_ids.to(device),
                         attention_mask=torch.cat([prompt_mask[owner], a_mask], 1).to(device),
                         position_ids=(lengths[:, None] + torch.arange(a_ids.shape[1])[None]).to(device),
                         cache=cache, use_cache=True).last_hidden_state
        select_h, targets, row_of = [], [], []
        for r, answer in enumerate(answers):
            if not answer:
                continue
            select_h.append(first[r:r + 1])
            select_h.append(a_out[r, :len(answer) - 1])
            targets += answer
            row_of += [r] * len(answer)
        if targets:
            logp = _head_logprobs(model, torch.cat(select_h), torch.tensor(targets, device=device)).cpu().double()
            per_row = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, torch.tensor(row_of), logp)
            for r, (_, i) in enumerate(rows):
                sums[i] = float(per_row[r])
        if on_batch:
            on_batch(len(rows))
    return [AnswerLikelihood(s, len(e[1]), e[2]) for s, e in zip(sums, encoded)]
