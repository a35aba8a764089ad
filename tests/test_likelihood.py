"""The likelihood scorer shares the preamble and each prompt across answers through the model's
key/value cache: its sums must be those of one plain forward pass per (prompt, answer) pair."""
from __future__ import annotations

import math

import pytest
import torch

from polyalpaca.likelihood import answer_likelihoods, likelihood_work
from polyalpaca.models import TINY_GEMMA, load_model

PAIRS = [
    ("Name three primary colours.", "Red, yellow and blue."),
    ("Name three primary colours.", "Красный, жёлтый и синий."),
    ("Переведи на английский: кошка", "cat"),
    ("Переведи на английский: кошка", "The English word is cat, a small domestic animal."),
    ("Write a haiku about the sea, with a long instruction that makes this prompt longer than others.",
     "Waves fold into foam / salt wind carries gull voices / the tide keeps its time"),
    ("Short", "A"),
    ("Explain photosynthesis.", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
]


def plain_logprob(model, tokenizer, template, prompt: str, answer: str, max_tokens: int) -> float:
    prompt_ids = [tokenizer.bos_token_id] + tokenizer(template.build(prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_tokens]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].double()
    logp = logits.log_softmax(-1)
    return sum(float(logp[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(answer_ids))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(TINY_GEMMA)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_shared_cache_equals_one_forward_per_pair(model, tokenizer, template, batch_size):
    expected = [plain_logprob(model, tokenizer, template, p, a, 12) for p, a in PAIRS]
    got = answer_likelihoods(model, tokenizer, template, PAIRS, batch_size=batch_size, max_answer_tokens=12)
    assert [g.logprob for g in got] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert all(g.logprob < 0 for g in got)
    # Cut at 12 tokens; bytes are those of the tokens kept.
    assert [g.tokens for g in got] == [min(12, len(tokenizer(a, add_special_tokens=False)["input_ids"]))
                                       for _, a in PAIRS]
    assert got[5].bytes == 1 and math.isclose(got[5].nll_per_byte, -got[5].logprob)


def test_order_and_grouping_do_not_change_a_pair_score(model, tokenizer, template):
    alone = answer_likelihoods(model, tokenizer, template, PAIRS[:1], max_answer_tokens=12)[0].logprob
    mixed = answer_likelihoods(model, tokenizer, template, list(reversed(PAIRS)), batch_size=3,
                               max_answer_tokens=12)[-1].logprob
    assert mixed == pytest.approx(alone, rel=1e-4)


def test_likelihood_work_counts_shared_work_once(tokenizer, template):
    one = likelihood_work(tokenizer, template, PAIRS[:1], 12)
    # The same prompt again costs only its answer's tokens (all but the last), all scored by the head.
    two = likelihood_work(tokenizer, template, PAIRS[:2], 12)
    second_answer = min(12, len(tokenizer(PAIRS[1][1], add_special_tokens=False)["input_ids"]))
    assert two.model_tokens - one.model_tokens == second_answer - 1
    assert two.scored_tokens - one.scored_tokens == second_answer
    plain = sum(1 + len(tokenizer(template.build(p), add_special_tokens=False)["input_ids"])
                + min(12, len(tokenizer(a, add_special_tokens=False)["input_ids"])) for p, a in PAIRS)
    assert likelihood_work(tokenizer, template, PAIRS, 12).model_tokens < 0.6 * plain


def test_weight_first_output_layer_is_the_same_product(model, tokenizer, template):
    from polyalpaca.evaluate import answer_prompts
    from polyalpaca.config import DecodingConfig
    from polyalpaca.data import TestPrompt
    from polyalpaca.models import output_logits, weight_first_output

    layer = model.get_output_embeddings()
    hidden = torch.randn(3, 5, layer.in_features)
    assert torch.allclose(output_logits(layer, hidden), layer(hidden), atol=1e-4)
    prompts = [TestPrompt(f"p{i}", "en", p) for i, (p, _) in enumerate(PAIRS[:4])]
    decoding = DecodingConfig(max_new_tokens=8, batch_size=4)
    with torch.no_grad():
        plain = model.generate(**tokenizer(template.build(PAIRS[0][0]), return_tensors="pt"), max_new_tokens=8,
                               do_sample=False)
        with weight_first_output(model):
            assert model.get_output_embeddings().forward.__name__ == "<lambda>"
            fast = model.generate(**tokenizer(template.build(PAIRS[0][0]), return_tensors="pt"), max_new_tokens=8,
                                  do_sample=False)
    assert torch.equal(plain, fast)
    assert "forward" not in vars(model.get_output_embeddings())  # restored
    assert len(answer_prompts(model, tokenizer, template, prompts, decoding)) == 4
