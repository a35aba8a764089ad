"""The prompt template: building prompts and cutting the response out of generated text."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .paths import RESOURCES_DIR


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    prompt_input: str
    prompt_no_input: str
    response_marker: str
    section_marker: str

    def build(self, instruction: str, input: str = "") -> str:
        """The prompt for one record; the model's answer follows it directly."""
        if input and input.strip():
            return self.prompt_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def extract_response(self, text: str) -> str:
        """The answer as the paper cut it: after the response marker, up to the next section marker."""
        if self.response_marker in text:
            text = text.split(self.response_marker, 1)[1]
        text = text.lstrip("\n")
        # A model that starts a new section ("### Instruction:") has finished its answer.
        marker = self.section_marker.lstrip("\n")
        if text.startswith(marker):
            return ""
        return text.split(self.section_marker, 1)[0].strip()


def read_resource(name: str, folder: str, suffix: str, what: str = "resource") -> tuple[Path, str]:
    """``(path, text)`` of ``polyalpaca/resources/FOLDER/NAME{suffix}``, or of the file ``name``
    itself when it ends in ``suffix``; a missing file names the ones that exist."""
    path = Path(name) if name.endswith(suffix) else RESOURCES_DIR / folder / f"{name}{suffix}"
    if not path.is_file():
        known = sorted(p.stem for p in (RESOURCES_DIR / folder).glob(f"*{suffix}"))
        raise FileNotFoundError(f"{what} not found: {path}; available: {', '.join(known)}")
    return path, path.read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def load_template(name: str = "alpaca") -> PromptTemplate:
    """Load a template from ``polyalpaca/resources/templates/NAME.json`` or from a JSON file path."""
    path, text = read_resource(name, "templates", ".json", "prompt template")
    spec = json.loads(text)
    return PromptTemplate(
        name=path.stem,
        prompt_input=spec["prompt_input"],
        prompt_no_input=spec["prompt_no_input"],
        response_marker=spec["response_marker"],
        section_marker=spec["section_marker"],
    )


def special_prefix(tokenizer) -> list[int]:
    """The special tokens the model's own tokenizer puts before a text (Gemma's: its BOS; BLOOM's:
    none). Training, generation and likelihood scoring all start a prompt with exactly these."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    raise ValueError(f"{type(tokenizer).__name__} changes a text's own tokens when it adds its special tokens")


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt as the model's tokenizer starts a text (``special_prefix``), with no
    special token after it: the answer follows the prompt directly."""
    return special_prefix(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_example(record, tokenizer, template: PromptTemplate, max_length: int, loss_on: str) -> dict:
    """Token ids and labels of one training example: prompt (``encode_prompt``: with BOS where the
    tokenizer adds one) response eos, cut at ``max_length``.

    ``loss_on="all"`` trains on prompt and response (the paper's LoRA recipe); ``"response"``
    masks the prompt with -100 (the paper's full fine-tuning recipe). Lives here, not in
    ``polyalpaca.train``, so that counting tokens (``polyalpaca plan``) needs no TRL."""
    if loss_on not in ("all", "response"):
        raise ValueError(f"loss_on must be 'all' or 'response', got {loss_on!r}")
    prompt_ids = encode_prompt(tokenizer, template.build(record.instruction, record.input))
    response_ids = tokenizer(record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = list(input_ids) if loss_on == "all" else ([-100] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}
