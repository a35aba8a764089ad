"""Scores: chrF (sacrebleu, 0..100) for answers and translations, and the paper's language gate
applied to a score. Pure functions; sacrebleu is imported on first use."""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()  # sacrebleu's defaults: character 6-grams, beta 2, no word n-grams


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """chrF of one hypothesis against one reference; 0 when there is no reference."""
    if not reference:
        return 0.0
    return float(_chrf().sentence_score(hypothesis, [reference]).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """chrF of a corpus (statistics summed over segments, aligned by position)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"chrF: {len(hypotheses)} hypotheses but {len(references)} references")
    return float(_chrf().corpus_score(list(hypotheses), [list(references)]).score)


def chrf_by_language(hypotheses: Mapping[str, Sequence[str]],
                     references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Corpus chrF per language; segments are aligned by position."""
    scores = {}
    for language, hyps in hypotheses.items():
        if language not in references:
            raise KeyError(f"chrF: no references for language {language!r}")
        refs = references[language]
        if len(hyps) != len(refs):
            raise ValueError(f"chrF {language}: {len(hyps)} hypotheses but {len(refs)} references")
        scores[language] = corpus_chrf(hyps, refs)
    return scores


def gated_score(score: float | None, language_ok: bool) -> float | None:
    """The paper's language gate: a response in the wrong language scores 0 (``score`` x gate,
    for judge ratings and chrF alike); a missing score (None) stays missing."""
    return None if score is None else score * int(bool(language_ok))
