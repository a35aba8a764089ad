"""The four recipes: data, seeding, budget accounting, validation hold-out."""
import pytest

from polyalpaca.data import Record
from polyalpaca.recipes import RECIPES, build_all, build_recipe, recipe_costs, split_validation

LANGS = ["en", "ru", "zh", "es"]


def records(n=20):
    return {lang: [Record(f"id{i:02d}", lang, f"{lang} instruction {i}", "", f"{lang} output {i}")
                   for i in range(n)] for lang in LANGS}


def test_validation_ids_are_held_out_in_every_language():
    split = split_validation(records(), 4, seed=1)
    assert len(split.validation_ids) == 4
    for lang in LANGS:
        assert {r.id for r in split.validation[lang]} == set(split.validation_ids)
        assert not {r.id for r in split.train[lang]} & set(split.validation_ids)


def test_recipe_sizes_and_budget_units():
    split = split_validation(records(), 4, seed=1)
    sets = build_all(list(RECIPES), split, LANGS, seed=3)
    by_name = {s.name: s for s in sets}
    assert [s.name for s in sets if s.recipe == "monolingual"] == [f"monolingual-{l}" for l in LANGS]
    assert len(by_name["multilingual"].train) == 4 * 16 and by_name["multilingual"].counts() == {l: 16 for l in sorted(LANGS)}
    assert len(by_name["english-only"].train) == 16 and by_name["english-only"].languages == ["en"]
    assert len(by_name["downsampled"].train) == 16 and len(by_name["downsampled"].counts()) > 1
    assert recipe_costs(sets) == {"monolingual": 4.0, "multilingual": 4.0, "english-only": 1.0, "downsampled": 1.0}


def test_same_seed_same_sample_other_seed_other_sample():
    split = split_validation(records(), 4, seed=1)
    a = build_recipe("downsampled", split, LANGS, seed=3)[0]
    b = build_recipe("downsampled", split, LANGS, seed=3)[0]
    c = build_recipe("downsampled", split, LANGS, seed=4)[0]
    key = lambda ts: [(r.lang, r.id) for r in ts.train]
    assert key(a) == key(b) and key(a) != key(c)
    assert split_validation(records(), 4, seed=1).validation_ids == split.validation_ids


def test_unknown_recipe_and_missing_language():
    split = split_validation(records(), 4, seed=1)
    with pytest.raises(ValueError, match="unknown recipe"):
        build_recipe("bilingual", split, LANGS, 0)
    with pytest.raises(ValueError, match="needs training data"):
        build_recipe("multilingual", split, LANGS + ["fi"], 0)
