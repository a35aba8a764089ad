"""Training on the tiny random Gemma 3: loss masking per method, the fast loss's exactness,
LoRA and full tuning through TRL, resume from a checkpoint, and the grid's caching."""

import pytest
import torch
import torch.nn.functional as F

from polyalpaca.config import TrainConfig
from polyalpaca.data import Record
from polyalpaca.fused_loss import add_fast_lm_loss, linear_cross_entropy_sum
from polyalpaca.models import TINY_GEMMA, load_model
from polyalpaca.train import tokenize_example, train

RECORDS = [Record(f"r{i}", "en", f"Write sentence number {i} about cats.", "" if i % 2 else "Cats sleep a lot.",
                  f"Cats are calm animals, says sentence {i}.") for i in range(12)]


def test_loss_masking_per_method(tokenizer, template):
    rec = RECORDS[0]
    full = tokenize_example(rec, tokenizer, template, 512, "response")
    lora = tokenize_example(rec, tokenizer, template, 512, "all")
    assert full["input_ids"] == lora["input_ids"] and lora["labels"] == lora["input_ids"]
    prompt_len = len(tokenizer(template.build(rec.instruction, rec.input), add_special_tokens=False)["input_ids"]) + 1
    assert full["labels"][:prompt_len] == [-100] * prompt_len
    assert full["labels"][prompt_len:] == full["input_ids"][prompt_len:]
    assert full["input_ids"][-1] == tokenizer.eos_token_id  # eos is appended and trained on
    assert len(tokenize_example(rec, tokenizer, template, 10, "all")["input_ids"]) == 10


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_linear_cross_entropy_equals_plain(softcap, weight_grad):
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(301, 16, dtype=torch.float64, requires_grad=weight_grad)
    y = torch.randint(0, 301, (37,))
    logits = h @ w.t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = F.cross_entropy(logits, y, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.5, [h, w] if weight_grad else [h])
    got = linear_cross_entropy_sum(h, w, y, softcap, chunk=8)
    got_grads = torch.autograd.grad(got * 0.5, [h, w] if weight_grad else [h])
    assert torch.allclose(got, ref, atol=1e-9)
    for a, b in zip(got_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_linear_cross_entropy_without_gradients_is_the_same_loss(softcap):
    """Validation (no grad) skips the gradient products; the loss is the training path's, bit for bit."""
    torch.manual_seed(2)
    h = torch.randn(53, 16, requires_grad=True)
    w = torch.randn(301, 16)
    y = torch.randint(0, 301, (53,))
    trained = linear_cross_entropy_sum(h, w, y, softcap, chunk=8)
    assert trained.requires_grad
    with torch.no_grad():
        validated = linear_cross_entropy_sum(h, w, y, softcap, chunk=8)
    assert not validated.requires_grad
    assert torch.equal(validated, trained.detach())


def test_linear_cross_entropy_reuses_its_logits_buffer_safely():
    """Calls of different sizes share one logits workspace; none may see another's values."""
    torch.manual_seed(1)
    w = torch.randn(301, 16, dtype=torch.float64)
    workspace = {}
    for n in (5, 37, 3, 16):
        h = torch.randn(n, 16, dtype=torch.float64, requires_grad=True)
        y = torch.randint(0, 301, (n,))
        ref = F.cross_entropy(h @ w.t(), y, reduction="sum")
        (ref_grad,) = torch.autograd.grad(ref, [h])
        got = linear_cross_entropy_sum(h, w, y, chunk=16, workspace=workspace)
        (got_grad,) = torch.autograd.grad(got, [h])
        assert torch.allclose(got, ref, atol=1e-9) and torch.allclose(got_grad, ref_grad, atol=1e-9)
    assert [b.numel() for b in workspace.values()] == [16 * 301]  # one buffer, grown to one block


def test_fast_loss_matches_model_loss_on_padded_batch(tiny_model_dir, tokenizer, template):
    """The patched forward (packed, logits only at labels) gives the model's own loss."""
    model = load_model(TINY_GEMMA)
    examples = [tokenize_example(r, tokenizer, template, 512, "response") for r in RECORDS[:3]]
    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [0] * (n - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [-100] * (n - len(e["labels"])) for e in examples])
    mask = (torch.arange(n)[None] < torch.tensor([len(e["input_ids"]) for e in examples])[:, None]).long()
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    add_fast_lm_loss(model)
    packed_ids = torch.tensor([sum((e["input_ids"] for e in examples), [])])
    packed_labels = [l if i else -100 for e in examples for i, l in enumerate(e["labels"])]
    positions = torch.tensor([sum((list(range(len(e["input_ids"]))) for e in examples), [])])
    fast = model(input_ids=packed_ids, position_ids=positions, fast_labels=torch.tensor([packed_labels])).loss
    assert abs(fast.item() - reference.item()) < 1e-5


@pytest.mark.parametrize("method, loss_on", [("lora", "all"), ("full", "response")])
@pytest.mark.slow
def test_fast_and_plain_trl_agree(tmp_path, tiny_model_dir, template, method, loss_on, capsys):
    cfg = TrainConfig(method=method, epochs=1, batch_size=4, gradient_accumulation=1, warmup_steps=0,
                      learning_rate=1e-3, loss_on=loss_on, max_length=64, lora=TrainConfig().lora)
    losses = {}
    for fast in (False, True):
        result = train(TINY_GEMMA, RECORDS[:8], RECORDS[8:], cfg, template, tmp_path / f"{fast}", fast=fast)
        losses[fast] = [h["loss"] for h in result.log_history if "loss" in h]
        model_dir = tmp_path / f"{fast}" / "model"
        assert (model_dir / ("adapter_config.json" if method == "lora" else "config.json")).exists()
        assert result.best_eval_loss is not None
    assert losses[True][0] == pytest.approx(losses[False][0], abs=1e-4)
    if method == "lora":
        check_merged_into_a_fresh_base(tmp_path / "True" / "model")
    printed = capsys.readouterr().out
    assert "{'loss'" not in printed  # no line per logging step in the chapters
    assert printed.count("epoch 1: validation loss") == 2 and printed.count("mean training loss") == 2
    assert printed.count("before training: validation loss") == 2  # the untuned model, once per run


def check_merged_into_a_fresh_base(model_dir):
    """Evaluation merges each adapter into a freshly read base: the same model every time, and
    merging changes no other copy of the base."""
    from polyalpaca.models import load_trained

    ids = torch.tensor([[2, 10, 20, 30, 40]])
    base = load_model(TINY_GEMMA)
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
        first = load_trained(model_dir, TINY_GEMMA)(input_ids=ids).logits
        assert torch.equal(load_trained(model_dir, TINY_GEMMA)(input_ids=ids).logits, first)
        assert torch.equal(base(input_ids=ids).logits, before)
        assert torch.equal(load_model(TINY_GEMMA)(input_ids=ids).logits, before)
        assert not torch.equal(before, first)  # the adapter did change the model


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resume_after_interruption(tmp_path, tiny_model_dir, template):
    """A run killed after its first epoch checkpoint resumes there and ends as an uninterrupted run."""
    from transformers import TrainerCallback

    class StopAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Interrupt

    cfg = TrainConfig(method="lora", epochs=2, batch_size=4, gradient_accumulation=1, warmup_steps=0,
                      learning_rate=1e-3, max_length=64, eval_every_epoch=False, best_by_validation=False)
    straight = train(TINY_GEMMA, RECORDS[:8], [], cfg, template, tmp_path / "straight")
    with pytest.raises(Interrupt):
        train(TINY_GEMMA, RECORDS[:8], [], cfg, template, tmp_path / "resumed", callbacks=[StopAfterFirstSave()])
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-2").exists()
    resumed = train(TINY_GEMMA, RECORDS[:8], [], cfg, template, tmp_path / "resumed")
    steps = [h["step"] for h in resumed.log_history if "loss" in h]
    assert resumed.steps == straight.steps == 4 and steps[-1] == 4
    a = [h["loss"] for h in straight.log_history if "loss" in h]
    b = [h["loss"] for h in resumed.log_history if "loss" in h]
    assert b[-1] == pytest.approx(a[-1], abs=1e-4)


def test_packed_attention_equals_padded_batch(tiny_model_dir, tokenizer, template):
    """Per-example attention in a packed row gives the same logits as a padded batch."""
    from polyalpaca import packed_attention

    model = load_model(TINY_GEMMA)
    examples = [tokenize_example(r, tokenizer, template, 512, "all")["input_ids"] for r in RECORDS[:3]]
    lengths = [len(e) for e in examples]
    n = max(lengths)
    ids = torch.tensor([e + [0] * (n - len(e)) for e in examples])
    mask = (torch.arange(n)[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        model.set_attn_implementation(packed_attention.NAME)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        packed = model(input_ids=torch.tensor([sum(examples, [])]),
                       position_ids=torch.tensor([sum((list(range(k)) for k in lengths), [])]),
                       cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=n, max_length_k=n).logits[0]
    start = 0
    for i, k in enumerate(lengths):
        assert torch.allclose(packed[start:start + k], padded[i, :k], atol=1e-4)
        start += k


def _padded_and_packed_loss(model, examples):
    """The model's own loss over ``examples`` padded in a batch, and packed into one row with no
    boundaries given (each example's first token is not a target in either)."""
    lengths = [len(e["input_ids"]) for e in examples]
    n = max(lengths)
    ids = torch.tensor([e["input_ids"] + [0] * (n - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [-100] * (n - len(e["labels"])) for e in examples])
    mask = (torch.arange(n)[None] < torch.tensor(lengths)[:, None]).long()
    packed_labels = [l if i else -100 for e in examples for i, l in enumerate(e["labels"])]
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        packed = model(input_ids=torch.tensor([sum((e["input_ids"] for e in examples), [])]),
                       labels=torch.tensor([packed_labels])).loss.item()
    return padded, packed


def test_bloom_cannot_keep_packed_examples_apart(template):
    """BLOOM's ALiBi attention takes no row boundaries: packed, each example attends to the ones
    before it and the loss changes. Gemma's attention takes them."""
    from polyalpaca import packed_attention
    from polyalpaca.models import TINY_BLOOM, load_tokenizer

    bloom = load_model(TINY_BLOOM)
    assert not packed_attention.keeps_examples_apart(bloom)
    assert packed_attention.keeps_examples_apart(load_model(TINY_GEMMA))
    examples = [tokenize_example(r, load_tokenizer(TINY_BLOOM), template, 64, "all") for r in RECORDS[:3]]
    padded, packed = _padded_and_packed_loss(bloom, examples)
    assert abs(padded - packed) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_fast_path_on_bloom_trains_as_padded(tmp_path, template, method):
    """The fast path on BLOOM (padded batches there, the fused loss) trains the same model as
    plain TRL: equal losses, step by step, and equal validation loss."""
    from polyalpaca.models import TINY_BLOOM

    lora = TrainConfig().lora
    lora.target_modules = ["query_key_value"]
    cfg = TrainConfig(method=method, epochs=1, batch_size=4, gradient_accumulation=1, warmup_steps=0,
                      learning_rate=1e-3, loss_on="all" if method == "lora" else "response", max_length=192, lora=lora)
    results = {fast: train(TINY_BLOOM, RECORDS[:8], RECORDS[8:], cfg, template, tmp_path / str(fast), fast=fast)
               for fast in (False, True)}
    losses = {fast: [h["loss"] for h in r.log_history if "loss" in h] for fast, r in results.items()}
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    assert results[True].best_eval_loss == pytest.approx(results[False].best_eval_loss, abs=1e-4)
    assert 0 < results[True].best_eval_loss < 20 and min(losses[True]) > 0  # the responses are trained on
