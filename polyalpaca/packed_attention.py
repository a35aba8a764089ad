"""Attention for padding-free (packed) training batches on any device.

TRL's padding-free collator concatenates a batch's examples into one row and passes their
boundaries as ``cu_seq_lens_q``. Flash-attention kernels use them; plain SDPA instead gets a
(total x total) block-diagonal mask and computes attention across the whole row, most of it
masked. ``packed_sdpa`` runs causal SDPA on each example separately (with Gemma's sliding
window where an example is longer than it), which is the same computation without the waste.
Without boundaries (generation, padded batches) it is transformers' own SDPA.

Only a model whose attention goes through transformers' ``AttentionInterface`` receives the
boundaries (``keeps_examples_apart``). BLOOM's does not (ALiBi in its own attention code): in a
packed row each example would attend to the examples before it, so such a model is trained on
padded batches instead (``polyalpaca.train``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "packed_sdpa"


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        sliding_window=None, cu_seq_lens_q=None, **kwargs):
    if cu_seq_lens_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    gqa = query.shape[1] != key.shape[1]
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        n = end - start
        mask, causal = None, True
        if sliding_window and n > sliding_window:
            i = torch.arange(n, device=query.device)
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < sliding_window)
            causal = False
        outputs.append(F.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], attn_mask=mask,
            dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=gqa))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def keeps_examples_apart(model) -> bool:
    """Whether the examples of a packed row stay apart in ``model``: its attention must take the
    row's boundaries through transformers' attention interface (Gemma, Llama, GPT-NeoX do; BLOOM
    does not)."""
    return bool(type(model).is_backend_compatible())


AttentionInterface.register(NAME, packed_sdpa_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
