"""The reduced vocabulary of the CPU profile's documented deviation (``lora.vocab_subset`` /
``full.vocab_subset``).

Gemma's tokenizer has 262,144 tokens; our data uses a few tens of thousands of them. With the
subset switched on, the training loss normalises over the tokens that occur in the training data
(training and validation records of every training language), the template and the special
tokens: the same subset for every run. Test prompts and reference answers never enter it, so
test data cannot shape the training loss. Off by default in every profile except ``cpu``.
"""
from __future__ import annotations

import torch

from .prompts import PromptTemplate


def data_vocabulary(tokenizer, texts, template: PromptTemplate) -> torch.Tensor:
    """Sorted ids of every token in ``texts``, the template and the special tokens."""
    ids: set[int] = set(tokenizer.all_special_ids)
    frame = template.prompt_input + template.prompt_no_input
    for text in [frame, *texts]:
        ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return torch.tensor(sorted(ids), dtype=torch.long)
