"""Answering the test prompts and scoring the answers without a judge.

Offline scores (no endpoint needed): the language gate (response level and line level), the
accuracy on prompts with a verifiable answer, and chrF against our reference answers. chrF and
accuracy are gated: an answer in the wrong language scores 0, as in the paper's protocol.
"""
from __future__ import annotations

import re
import re as _re
import unicodedata
from dataclasses import asdict, dataclass

from .data import TestPrompt
from .langid import language_gate
from .metrics import gated_score, sentence_chrf
from .prompts import PromptTemplate

# generate (torch) is imported where answers are generated: scoring stored answers needs no model.

# The version of the offline scorer (gate rules, echo and loop detection, chrF, accuracy): bump it
# when scoring changes, and every stored score is recomputed from the stored answers.
SCORER_VERSION = 2


def answer_prompts(model, tokenizer, template: PromptTemplate, prompts: list[TestPrompt],
                   decoding, on_batch=None) -> list[str]:
    """Generate one answer per prompt (the prompt goes in the template's instruction slot)."""
    from .generate import generate_texts

    texts = [template.build(p.prompt) for p in prompts]
    outputs = generate_texts(model, tokenizer, texts, decoding, on_batch=on_batch)
    return [template.extract_response(template.response_marker + "\n" + out) for out in outputs]


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", text)


def verifiable_correct(prompt: TestPrompt, response: str) -> bool | None:
    """Whether the response states the prompt's short answer (None when it has none).

    Numbers must appear as a whole number (not inside a longer one); names match
    case-insensitively, with any listed alias accepted."""
    if prompt.answer is None:
        return None
    text = _normalise(response).replace(",", "").replace("\u00a0", "")
    if prompt.answer_kind == "number":
        target = prompt.answer.replace(",", "")
        return re.search(rf"(?<![\d.]){re.escape(target)}(?![\d]|\.\d)", text) is not None
    names = [prompt.answer, *prompt.answer_aliases]
    return any(_normalise(n) in text for n in names)


@dataclass
class ScoredAnswer:
    run: str
    prompt_id: str
    lang: str
    prompt: str
    response: str
    detected: str | None
    gate: bool
    gate_reason: str
    line_pass: bool
    correct: bool | None
    chrf: float
    gated_chrf: float

    def to_dict(self) -> dict:
        return asdict(self)


def score_answers(prompts: list[TestPrompt], responses: list[str], seed: int = 0,
                  candidates: tuple[str, ...] | None = None) -> list[dict]:
    """Score stored answers (rows for the artefact store); the gate detects languages among
    ``candidates`` when given."""
    return [score_answer("", p, r, seed, candidates).to_dict() for p, r in zip(prompts, responses)]


def score_answer(run: str, prompt: TestPrompt, response: str, seed: int = 0,
                 candidates: tuple[str, ...] | None = None) -> ScoredAnswer:
    gate = language_gate(prompt.prompt, response, prompt.lang, seed, candidates)
    similarity = sentence_chrf(response, prompt.reference)
    correct = verifiable_correct(prompt, response)
    return ScoredAnswer(
        run=run, prompt_id=prompt.id, lang=prompt.lang, prompt=prompt.prompt, response=response,
        detected=gate.detected, gate=gate.passed, gate_reason=gate.reason, line_pass=gate.line_pass,
        correct=None if correct is None else bool(correct and gate.passed),
        chrf=round(similarity, 3), gated_chrf=round(gated_score(similarity, gate.passed), 3),
    )


def worked_scores(prompt: TestPrompt, english: TestPrompt, seed: int = 0) -> list[dict]:
    """Each offline score on a few answers to one prompt, for the evaluation chapter: a short
    correct answer (the reference's first sentence), a long answer made of the reference's words in
    another order, the same correct answer in English, and the question repeated. chrF rewards
    length and copied words; the gate catches the English answer and the echo; the likelihood
    score does not look at generated answers at all."""
    first = _re.split(r"(?<=[.!?。！？])\s*", prompt.reference.strip())[0]
    words = prompt.reference.split()
    shuffled = " ".join(words[len(words) // 2:] + words[:len(words) // 2])
    candidates = [("short correct answer", first), ("the reference's words, halves swapped (no sense)", shuffled),
                  ("the correct answer, in English", _re.split(r"(?<=[.!?])\s*", english.reference.strip())[0]),
                  ("the question, repeated", f"{prompt.prompt} {prompt.prompt}")]
    rows = []
    for label, text in candidates:
        s = score_answer("example", prompt, text, seed)
        rows.append({"answer": label, "text": text, "characters": len(text), "chrF": round(s.chrf, 1),
                     "gate": s.gate_reason, "gated chrF": round(s.gated_chrf, 1)})
    return rows
