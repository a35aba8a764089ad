"""Checks of the embedded data set itself: alignment, duplicates, empty fields, and whether
langdetect agrees with each text's language label."""
from __future__ import annotations

import re
from collections import Counter

from .data import EMBEDDED_TEST_LANGUAGES, EMBEDDED_TRAIN_LANGUAGES, embedded_test, embedded_train
from .langid import detect_language

_CODE = re.compile(r"```.*?```", re.DOTALL)


def prose(text: str) -> str:
    """Text with code blocks removed (code is not in any natural language)."""
    return _CODE.sub(" ", text).strip()


def langdetect_agreement(seed: int = 0) -> dict[str, dict[str, float]]:
    """Per language: the share of instructions, inputs, outputs, test prompts and references
    whose langdetect label equals the language label."""
    out: dict[str, dict[str, float]] = {}
    for lang in EMBEDDED_TEST_LANGUAGES:
        fields: dict[str, list[str]] = {}
        if lang in EMBEDDED_TRAIN_LANGUAGES:
            recs = embedded_train(lang).items
            fields["instruction"] = [r.instruction for r in recs]
            fields["input"] = [r.input for r in recs if r.input.strip()]
            fields["output"] = [prose(r.output) for r in recs]
        tests = embedded_test(lang).items
        fields["prompt"] = [t.prompt for t in tests]
        fields["reference"] = [t.reference for t in tests]
        out[lang] = {name: (sum(detect_language(t, seed) == lang for t in texts) / len(texts) if texts else float("nan"))
                     for name, texts in fields.items()}
    return out


def mismatches(lang: str, seed: int = 0) -> list[tuple[str, str, str | None]]:
    """(id, field, detected) for every training text whose detected language differs from ``lang``."""
    bad = []
    for r in embedded_train(lang).items:
        for name, text in (("instruction", r.instruction), ("input", r.input), ("output", prose(r.output))):
            if text.strip():
                got = detect_language(text, seed)
                if got != lang:
                    bad.append((r.id, name, got))
    return bad


def alignment_problems() -> list[str]:
    """Ids missing or extra in any language, compared with English."""
    problems = []
    en_train = [r.id for r in embedded_train("en").items]
    for lang in EMBEDDED_TRAIN_LANGUAGES:
        ids = [r.id for r in embedded_train(lang).items]
        if ids != en_train:
            problems.append(f"train/{lang}: ids differ from English "
                            f"(missing {sorted(set(en_train) - set(ids))[:5]}, extra {sorted(set(ids) - set(en_train))[:5]})")
    en_test = [t.id for t in embedded_test("en").items]
    for lang in EMBEDDED_TEST_LANGUAGES:
        ids = [t.id for t in embedded_test(lang).items]
        if ids != en_test:
            problems.append(f"test/{lang}: ids differ from English")
    return problems


def duplicate_texts(lang: str) -> list[str]:
    counts = Counter((r.instruction.strip().lower(), r.input.strip().lower()) for r in embedded_train(lang).items)
    return [f"{inst[:60]!r}" for (inst, _), n in counts.items() if n > 1]


def category_counts() -> dict[str, int]:
    return dict(Counter(r.category for r in embedded_train("en").items).most_common())


def word_counts(lang: str = "en") -> list[int]:
    return [len(r.output.split()) for r in embedded_train(lang).items]
