"""An exact, memory-light language-modelling loss for large vocabularies.

``LinearCrossEntropy`` computes sum_i CE(h_i W^T, y_i) over the selected positions in chunks of
tokens. Because the loss is a sum, its gradient with respect to the logits is known in the
forward pass (softmax - one-hot), so each chunk's gradients for the hidden states (and, when
the head is trained, the head's weight) are formed right away and the chunk's logits are
dropped: the (tokens x vocabulary) logits never exist in full, and nothing is recomputed in the
backward pass (TRL's chunked head recomputes them). The result equals the plain computation
up to floating-point rounding.

``add_fast_lm_loss`` patches a causal LM's forward so that ``model(..., fast_labels=labels)``
returns this loss over the positions whose next-token label is not -100; calls without
``fast_labels`` run the original forward, so generation is untouched. The call still goes
through any wrapper (PEFT, DDP, FSDP, DeepSpeed), which only see an ordinary forward.
"""
from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch

# Tokens per block of logits (fp32, 262k vocabulary: 1 MB a token). With a trained head (full
# tuning) every block adds its share to the vocabulary x hidden weight gradient, so fewer, larger
# blocks are faster; with a frozen head (LoRA) block size does not change the speed, and smaller
# blocks keep the peak memory down (benchmarks/bench_train.py measured both). ``chunk=None``
# picks by whether the head is trained.
CHUNK_FROZEN_HEAD = 256
CHUNK_TRAINED_HEAD = 1024


def logits_workspace(workspace: dict | None, rows: int, vocab: int, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    """A (rows x vocab) buffer for the logits, kept in ``workspace`` between calls on CPU.

    On CPU a fresh block of this size (256 MB-1 GB) comes from the operating system zero-filled,
    page by page, on every training step; writing the logits into it then ran 20-25% below the
    matrix product's speed into a reused buffer (measured on the project's 2-core machine). GPUs'
    caching allocator already reuses blocks, so there (or with no ``workspace``) it is a fresh
    tensor. The buffer holds no state between calls: each block is overwritten before it is read."""
    if workspace is None or torch.device(device).type != "cpu":
        return torch.empty(rows, vocab, device=device, dtype=dtype)
    key = (str(device), dtype)
    buf = workspace.get(key)
    if buf is None or buf.numel() < rows * vocab:
        workspace.pop(key, None)
        buf = workspace[key] = torch.empty(rows * vocab, device=device, dtype=dtype)
    return buf[: rows * vocab].view(rows, vocab)


def _chunked_cross_entropy(hidden, weight, targets, softcap, chunk, workspace, with_grads: bool):
    """sum_i CE(h_i W^T, y_i), block by block of ``chunk`` tokens; with ``with_grads`` also the
    gradients for the hidden states and (when the head is trained) the weight, formed from each
    block's softmax before the block is dropped. The loss is computed by the same operations
    either way, so it is the same number with or without the gradients."""
    n = hidden.shape[0]
    need_w = with_grads and weight.requires_grad
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros_like(weight) if need_w else None
    # Half-precision inputs accumulate the softmax in fp32; fp32/fp64 stay as they are.
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    total = hidden.new_zeros((), dtype=acc)
    w = weight
    direct = acc == hidden.dtype  # fp32: the product goes straight into the logits buffer
    buffer = logits_workspace(workspace, min(chunk, n), w.shape[0], hidden.device, acc) if direct else None
    for start in range(0, n, chunk):
        h = hidden[start:start + chunk]
        t = targets[start:start + chunk]
        logits = torch.mm(h, w.t(), out=buffer[: len(h)]) if direct else (h @ w.t()).to(acc)
        if softcap:
            capped = torch.tanh(logits / softcap)
            logits = capped * softcap
        rows = torch.arange(len(t), device=t.device)
        target_logit = logits[rows, t]
        # Softmax in place, in as few passes over the (chunk x vocabulary) block as possible.
        peak = logits.amax(dim=-1, keepdim=True)
        grad = logits.sub_(peak).exp_()
        norm = grad.sum(dim=-1, keepdim=True)
        total += (peak.squeeze(-1) + norm.log().squeeze(-1) - target_logit).sum()
        if not with_grads:
            continue
        grad.div_(norm)
        grad[rows, t] -= 1.0
        if softcap:
            grad.mul_(1.0 - capped * capped)
        grad = grad.to(h.dtype)
        grad_hidden[start:start + chunk] = grad @ w
        if need_w:
            grad_weight.addmm_(grad.t(), h)
    return total, grad_hidden, grad_weight


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk, workspace):
        total, grad_hidden, grad_weight = _chunked_cross_entropy(hidden, weight, targets, softcap, chunk, workspace,
                                                                 with_grads=True)
        ctx.need_w = grad_weight is not None
        ctx.save_for_backward(grad_hidden, grad_weight if ctx.need_w else torch.empty(0))
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Scaled in place: the buffers were made for this one backward pass, and for a trained
        # head (full tuning) a copy would be another vocabulary x hidden tensor per step.
        gw = grad_weight.mul_(grad_output.to(grad_weight.dtype)) if ctx.need_w else None
        return grad_hidden.mul_(grad_output.to(grad_hidden.dtype)), gw, None, None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             softcap: float | None = None, chunk: int | None = None,
                             workspace: dict | None = None) -> torch.Tensor:
    """sum_i CE(hidden_i @ weight.T, targets_i) without materialising the logits.

    ``workspace``: a dict the caller keeps between calls, in which the logits buffer is reused
    (``add_fast_lm_loss`` keeps one per model, so it is freed with the model)."""
    if hidden.shape[0] == 0:
        return (hidden.sum() + weight.sum()) * 0.0  # keeps the graph connected
    if chunk is None:
        chunk = CHUNK_TRAINED_HEAD if weight.requires_grad else CHUNK_FROZEN_HEAD
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        # Validation: no backward pass follows, so the gradients (a second product as large as
        # the logits) are not formed; the loss is the same number.
        return _chunked_cross_entropy(hidden, weight, targets, softcap or 0.0, chunk, workspace, with_grads=False)[0]
    return LinearCrossEntropy.apply(hidden, weight, targets, softcap or 0.0, chunk, workspace)


@dataclass
class FastLossOutput:
    loss: torch.Tensor
    num_tokens: torch.Tensor
    logits: None = None


def add_fast_lm_loss(model, chunk: int | None = None) -> None:
    """Patch ``model.forward`` to accept ``fast_labels`` (unshifted labels, -100 = ignored): the
    exact loss, with the softmax over the whole vocabulary. Generation is unchanged."""
    if getattr(model, "_polyalpaca_fast_loss", False):
        return
    original = model.forward
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    workspace: dict = {}  # the logits buffer, reused from step to step and freed with the model

    @functools.wraps(type(model).forward)
    def forward(self, *args, fast_labels=None, num_items_in_batch=None, **kwargs):
        if fast_labels is None:
            return original(*args, **kwargs)
        kwargs["use_cache"] = False
        backbone = getattr(self, self.base_model_prefix)
        hidden = backbone(*args, **kwargs).last_hidden_state[:, :-1]
        targets = fast_labels[:, 1:]
        keep = targets != -100
        head = self.get_output_embeddings()
        weight = head.weight
        if hasattr(weight, "full_tensor"):  # FSDP2 shards the head as a DTensor
            weight = weight.full_tensor()
        loss_sum = linear_cross_entropy_sum(hidden[keep], weight, targets[keep], softcap, chunk, workspace)
        count = keep.sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
        return FastLossOutput(loss=loss_sum / denominator, num_tokens=count)

    model.forward = types.MethodType(forward, model)
    model._polyalpaca_fast_loss = True
