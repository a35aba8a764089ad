"""The dose-response study: its training sets (recipes.build_dose) and its curve (polyalpaca.dose),
on records and answer frames with known effects."""
import numpy as np
import pandas as pd
import pytest

from polyalpaca import dose as D
from polyalpaca.data import Record
from polyalpaca.recipes import SplitData, build_dose, build_recipe


def split(n=24, v=4):
    def recs(lang, ids):
        return [Record(f"id{i}", lang, f"q{i}-{lang}", "", f"a{i}-{lang}") for i in ids]
    return SplitData(train={l: recs(l, range(n)) for l in ("en", "ru")},
                     validation={l: recs(l, range(n, n + v)) for l in ("en", "ru")})


def test_doses_replace_nested_records_and_end_at_the_monolingual_set():
    data = split()
    english = build_recipe("english-only", data, ["en", "ru"], seed=7)[0]
    mono_ru = next(t for t in build_recipe("monolingual", data, ["en", "ru"], seed=7) if t.name == "monolingual-ru")
    sets = {k: build_dose(data, "ru", k, seed=7) for k in (0, 2, 6, 24)}
    assert [(r.lang, r.id) for r in sets[0].train] == [(r.lang, r.id) for r in english.train]
    assert sets[0].validation == english.validation
    assert sorted(r.id for r in sets[24].train) == sorted(r.id for r in mono_ru.train)
    assert {r.lang for r in sets[24].train + sets[24].validation} == {"ru"}
    replaced = {k: {r.id for r in s.train if r.lang == "ru"} for k, s in sets.items()}
    assert [len(replaced[k]) for k in (0, 2, 6, 24)] == [0, 2, 6, 24]
    assert replaced[2] <= replaced[6] <= replaced[24]  # nested: one seed's doses share their swaps
    assert [r.id for r in sets[6].train] == [r.id for r in english.train]  # same records, same order
    assert sum(r.lang == "ru" for r in sets[6].validation) == 1  # the same share held out (6/24 of 4)
    assert {r.id for r in build_dose(data, "ru", 6, seed=8).train if r.lang == "ru"} != replaced[6]
    with pytest.raises(ValueError, match="outside 0..24"):
        build_dose(data, "ru", 25, seed=7)


def curve_answers(tau=4.0, top=4.0, doses=(2, 6), seeds=(1, 2, 3), n=40, noise=0.3, rng_seed=0):
    """Log-odds that rise as top (1 - exp(-k / tau)) over English-only; multilingual at ``top``."""
    rng = np.random.default_rng(rng_seed)
    runs = [("english-only", "english-only", 0.0), ("monolingual", "monolingual-ru", top * (1 - np.exp(-24 / tau))),
            ("multilingual", "multilingual", top)]
    runs += [("dose", f"dose-ru-{k}", top * (1 - np.exp(-k / tau))) for k in doses]
    prompt = rng.normal(0, 1.0, n)
    rows = []
    for recipe, name, level in runs:
        for s in seeds:
            seed_effect = rng.normal(0, 0.1)
            for lang in ("en", "ru", "bg"):
                for i in range(n):
                    rows.append({"method": "lora", "recipe": recipe, "name": name, "seed": s, "lang": lang,
                                 "prompt_id": f"p{i}", "model": "m", "nll_per_byte": 1.0 + rng.normal(0, 0.01),
                                 "lang_logodds": None if lang == "en" else level + seed_effect + prompt[i]
                                 + rng.normal(0, noise), "gate_reason": "ok", "gate": True, "gated_chrf": 1.0,
                                 "judge": None, "gated_judge": None})
    base = [{"method": "base", "recipe": "base", "name": "base", "seed": np.nan, "lang": lang, "prompt_id": f"p{i}",
             "model": "m", "nll_per_byte": 1.0, "lang_logodds": None if lang == "en" else prompt[i],
             "gate_reason": "ok", "gate": True, "gated_chrf": 1.0, "judge": None, "gated_judge": None}
            for lang in ("en", "ru", "bg") for i in range(n)]
    return pd.DataFrame(rows + base)


def test_the_curve_recovers_known_effects_and_the_smallest_sufficient_dose():
    table = D.dose_table(curve_answers(), "lora", "ru", ["bg"], full_dose=24, share=0.5)
    ru = table[(table["measure"] == "robustness") & (table["languages"] == "ru")].set_index("dose")
    assert list(ru.index) == [0, 2, 6, 24]
    truth = {k: 4 * (1 - np.exp(-k / 4)) for k in (0, 2, 6, 24)}
    for k, v in truth.items():
        assert ru.loc[k, "effect"] == pytest.approx(v, abs=0.25)
        assert ru.loc[k, "low"] <= ru.loc[k, "effect"] <= ru.loc[k, "high"]
    assert ru.loc[6, "target"] == pytest.approx(2.0, abs=0.25)
    found = D.sufficient_dose(table, "robustness", "ru")
    assert found["estimate"] == 6 and found["shown at"] == 6 and found["not ruled out from"] in (2, 6)
    assert found["fitted crossing"] == pytest.approx(4 * np.log(2), rel=0.3)
    a, tau = D.fit_saturating(np.array([0, 2, 6, 24.0]), np.array([truth[k] for k in (0, 2, 6, 24)]))
    assert a == pytest.approx(4.0, rel=0.02) and tau == pytest.approx(4.0, rel=0.03)
    assert set(D.sufficient_doses(table)["languages"]) == {"ru", "bg"}
    fig = D.plot_dose_response(table)
    assert len([ax for ax in fig.axes if ax.has_data()]) == len(table[["measure", "languages"]].drop_duplicates())


def test_no_effect_gives_no_sufficient_dose_shown():
    """With every dose equal to English-only and the multilingual model far above, no dose is shown
    to reach half of its gain."""
    table = D.dose_table(curve_answers(tau=1e9), "lora", "ru", ["bg"], full_dose=24, share=0.5)
    found = D.sufficient_dose(table, "robustness", "ru")
    assert found["shown at"] is None and found["estimate"] is None
