"""Checks of the embedded data set itself (issue: our own parallel instruction data)."""
import statistics

import pytest

from polyalpaca import datacheck
from polyalpaca.data import EMBEDDED_TEST_LANGUAGES, EMBEDDED_TRAIN_LANGUAGES, embedded_test, embedded_train

CATEGORIES = {"open_qa", "brainstorming", "classification", "rewriting", "extraction", "summarization",
              "reasoning", "arithmetic", "code", "creative", "advice"}


@pytest.mark.parametrize("lang", EMBEDDED_TRAIN_LANGUAGES)
def test_training_files_are_complete(lang):
    res = embedded_train(lang)  # raises on any empty required field, bad type or duplicate id
    assert not res.skipped and len(res.items) >= 300
    assert all(r.category in CATEGORIES for r in res.items)
    assert not datacheck.duplicate_texts(lang), "duplicate instructions"


@pytest.mark.parametrize("lang", EMBEDDED_TEST_LANGUAGES)
def test_test_files_are_complete(lang):
    items = embedded_test(lang).items
    assert len(items) >= 40 and all(t.reference.strip() for t in items)
    verifiable = [t for t in items if t.answer is not None]
    assert len(verifiable) >= 10 and all(t.answer_kind in ("number", "name") for t in verifiable)
    numbers = [t for t in verifiable if t.answer_kind == "number"]
    assert all(t.answer.replace(".", "").isdigit() for t in numbers)
    assert len({t.prompt for t in items}) == len(items)


def test_ids_are_aligned_across_languages():
    assert datacheck.alignment_problems() == []
    en = {t.id: t for t in embedded_test("en").items}
    for lang in EMBEDDED_TEST_LANGUAGES:
        for t in embedded_test(lang).items:
            assert (t.answer is None) == (en[t.id].answer is None), (lang, t.id)
            if t.answer_kind == "number":
                assert t.answer == en[t.id].answer, (lang, t.id)


@pytest.mark.slow
def test_langdetect_agrees_with_the_labels():
    agreement = datacheck.langdetect_agreement()
    print("\nlangdetect agreement per language:")
    for lang, fields in agreement.items():
        print(f"  {lang}: " + ", ".join(f"{k} {v:.3f}" for k, v in fields.items()))
    for lang, fields in agreement.items():
        for name in ("instruction", "output", "prompt", "reference"):
            if name in fields:
                assert fields[name] >= 0.97, (lang, name, fields[name])


def test_length_statistics_are_sensible():
    words = datacheck.word_counts("en")
    assert statistics.median(words) <= 80 and max(words) <= 150
    share_short = sum(w <= 80 for w in words) / len(words)
    assert share_short >= 0.8
    cats = datacheck.category_counts()
    assert len(cats) >= 9 and min(cats.values()) >= 5


@pytest.mark.parametrize("lang", EMBEDDED_TEST_LANGUAGES)
def test_each_reference_passes_its_own_verifiable_answer(lang):
    from polyalpaca.evaluate import verifiable_correct

    bad = [t.id for t in embedded_test(lang).items if t.answer is not None and not verifiable_correct(t, t.reference)]
    assert bad == []
