"""The dose-response study: its training sets (recipes.build_dose) and its curve (polyalpaca.dose),
on records and answer frames with known effects."""
import numpy as np
import pandas as pd
import pytest

from polyalpaca import dose as D
from polyalpaca import findings as F
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


SPREADS = {"quality": (3.0, 2.0, 3.0), "robustness": (1.5, 2.0, 1.5), "answer_language": (0.1, 0.1, 0.3)}


def test_simulated_dose_builds_carry_their_planted_effects():
    """The simulation's builds are what it says: each dose's effect over English-only is its share of
    multilingual's gain, the full dose is the monolingual model (its own language only), and without
    the doses' answers the answer-language curve has only its ends (as in a build)."""
    rng = np.random.default_rng(1)
    small = {m: (0.01, 0.01, 0.01) for m in SPREADS}
    gains = {"quality": 4.0, "robustness": 2.0, "answer_language": 0.4}
    answers = D.simulated_dose_answers(small, "ru", ["bg"], [4, 12], 24, [1, 2, 3], 20, rng, gains,
                                       {4: 0.25, 12: 0.5, 24: 1.0})
    assert set(answers.loc[answers["name"] == "monolingual-ru", "lang"]) == {"ru"}
    table = D.dose_table(answers, "lora", "ru", ["bg"], full_dose=24, share=0.5)
    for measure, gain in gains.items():
        ru = table[(table["measure"] == measure) & (table["languages"] == "ru")].set_index("dose")
        assert ru["effect"].to_dict() == pytest.approx({0: 0.0, 4: gain / 4, 12: gain / 2, 24: gain}, abs=0.1 * gain)
        assert ru.loc[12, "reach"] == pytest.approx(0.0, abs=0.1 * gain)
    assert 24 not in set(table.loc[table["languages"] == "bg", "dose"])  # monolingual-ru answers no bg prompt
    quiet = D.simulated_dose_answers(small, "ru", ["bg"], [4, 12], 24, [1, 2, 3], 20, rng, gains, dose_answers=False)
    quiet_table = D.dose_table(quiet, "lora", "ru", ["bg"], full_dose=24)
    answered = quiet_table[quiet_table["measure"] == "answer_language"]
    assert set(zip(answered["languages"], answered["dose"])) == {("ru", 0), ("ru", 24)}  # only the ends answered


def test_dose_error_rates_count_false_verdicts_and_power_on_few_tables():
    """Few tables, with effects far above the noise: every curve and kind of false verdict is
    counted (rarely: 12 tables cannot measure a rate, the slow test does), and every at-target build
    shows a dose improving on English-only (the counts see a real effect, so a rate near 0 is not a
    procedure that never speaks)."""
    small = {m: (0.3 * s[0], 0.3 * s[1], 0.3 * s[2]) for m, s in SPREADS.items()}
    rates = D.simulate_dose_error_rates(small, "ru", ["bg"], [4, 12], 24, [1, 2, 3], 24, tables=12,
                                        gains={"quality": 30.0, "robustness": 15.0, "answer_language": 1.0})
    by = rates.set_index(["measure", "languages"])
    assert list(by.index) == [(m, l) for m in ("robustness", "answer_language") for l in ("ru", "bg")] + [
        ("quality", l) for l in ("en", "ru", "bg")] + [("any curve", "all")]
    assert rates[["tables", "seeds", "prompts"]].iloc[0].tolist() == [12, 3, 24]
    curves = by.drop(index=("any curve", "all"))
    false = ["false improves, no dose effect", "false differs, no dose effect",
             "false reaches, every dose at target"]
    assert (curves[false] <= 0.25).all().all()
    assert (curves["false improves, no dose effect"] <= curves["false differs, no dose effect"]).all()
    assert (curves["power, every dose at target"] == 1.0).all()


@pytest.mark.slow
def test_dose_procedure_false_verdict_rates_are_at_most_alpha():
    """The dose procedure on 400 simulated builds of the CPU default's dose design (doses 4 and 12
    of 24, three dose seeds, 24 prompts) with seed-heavy spreads (as the findings simulation):
    with no dose effect, some dose shown to improve on English-only, per curve, at most alpha;
    with every dose exactly at the target share, some dose shown to reach it at most alpha; the
    band's two sides together at most 2 alpha. 400 tables tell 5% from 10% (a 10% rate reads
    above 0.07 in 95 of 100 runs)."""
    rates = D.simulate_dose_error_rates(SPREADS, "ru", ["bg"], [4, 12], 24, [42, 43, 44], 24, alpha=0.05, tables=400)
    print(rates.drop(columns=["seeds", "prompts", "alpha"]).to_string())
    curves = rates[rates["measure"] != "any curve"]
    assert len(curves) == 7
    assert (curves["false improves, no dose effect"] <= 0.07).all()
    assert (curves["false reaches, every dose at target"] <= 0.07).all()
    assert (curves["false differs, no dose effect"] <= 0.12).all()


def test_the_study_simulates_its_own_design_and_draws_the_wrong_language_curve():
    """``DoseStudy`` on a build with three dose seeds: the answers' wrong-language rate per dose as
    planted (it falls with the dose), and the simulation on this build's design and spreads; with
    one dose seed there is nothing to simulate."""
    answers = curve_answers(n=20)
    planted = {"english-only": 10, "dose-ru-2": 6, "dose-ru-6": 2, "monolingual-ru": 0, "multilingual": 0, "base": 14}
    wrong = [(lang != "en") and int(p[1:]) < planted[name]
             for name, lang, p in zip(answers["name"], answers["lang"], answers["prompt_id"])]
    answers["gate_reason"] = np.where(wrong, "wrong_language", "ok")
    study = D.DoseStudy(F.with_measures(answers), "lora", "ru", [2, 6], 24, ["bg"], 0.5, 0.05, [])
    assert study.dose_seeds() == [1, 2, 3]
    rates = study.wrong_language()
    ru = rates[rates["lang"] == "ru"].groupby("point")["wrong-language rate"].mean()
    assert ru.to_dict() == pytest.approx({"dose 0": 0.5, "dose 2": 0.3, "dose 6": 0.1, "dose 24": 0.0,
                                          "multilingual": 0.0, "base": 0.7})
    fig = D.plot_wrong_language(rates)
    assert len([ax for ax in fig.axes if ax.has_data()]) == 2  # ru and bg
    simulated = study.error_rates(tables=3)
    assert set(zip(simulated["measure"], simulated["languages"])) == set(
        zip(study.table()["measure"], study.table()["languages"])) | {("any curve", "all")}
    one_seed = D.DoseStudy(study.answers[study.answers["seed"].isin([1]) | study.answers["seed"].isna()], "lora", "ru",
                           [2, 6], 24, ["bg"], 0.5, 0.05, [])
    assert one_seed.error_rates(tables=3).empty
    no_answers = study.answers.assign(wrong_language=np.where(study.answers["recipe"] == "dose", np.nan,
                                                              study.answers["wrong_language"]))
    assert D.DoseStudy(no_answers, "lora", "ru", [2, 6], 24, ["bg"], 0.5, 0.05, []).wrong_language().empty


def test_a_curve_with_one_positive_dose_has_no_fit():
    """One positive dose (the unseen language's curve with one inner dose) fits every tau exactly:
    no fit is reported, rather than the grid's first tau."""
    a, tau = D.fit_saturating(np.array([0, 12]), np.array([0.0, 0.76]))
    assert np.isnan(a) and np.isnan(tau)
    a, tau = D.fit_saturating(np.array([0, 12, 24]), np.array([0.0, 0.72, 1.08]))
    assert a > 1.08 and 0 < tau < 240


# --- the second axis: one extra language against two at the same dose --------------------------

def test_a_split_dose_trains_the_same_records_with_half_in_the_second_language():
    """Dose k split between two languages replaces the same ids as dose k, in the same order, the
    last k // 2 of them in the second language; the held-out records likewise."""
    data = split()
    data.train["cs"] = [Record(r.id, "cs", f"q-{r.id}-cs", "", f"a-{r.id}-cs") for r in data.train["en"]]
    data.validation["cs"] = [Record(r.id, "cs", f"q-{r.id}-cs", "", f"a-{r.id}-cs") for r in data.validation["en"]]
    one, two = build_dose(data, "ru", 12, seed=7), build_dose(data, "ru", 12, seed=7, mix_language="cs")
    assert two.name == "dose-ru+cs-12" and two.languages == ["en", "ru", "cs"] and two.budget_units == 1.0
    assert [r.id for r in two.train] == [r.id for r in one.train]
    assert two.counts() == {"cs": 6, "en": 12, "ru": 6}
    swapped = {r.id for r in one.train if r.lang == "ru"}
    assert {r.id for r in two.train if r.lang != "en"} == swapped
    assert [r.lang for r in two.validation].count("cs") == 1 and [r.lang for r in two.validation].count("ru") == 1
    odd = build_dose(data, "ru", 5, seed=7, mix_language="cs")
    assert odd.counts() == {"cs": 2, "en": 19, "ru": 3}
    sets = build_recipe("dose", data, ["en", "ru"], 7, (12,), "ru", "cs")
    assert [t.name for t in sets] == ["dose-ru-12", "dose-ru+cs-12"]


def mix_answers(difference=0.0, seen_cost=0.0, seeds=(1, 2, 3), n=30, rng_seed=0):
    """Answers of the second axis: English-only, dose 12 in Russian, dose 12 split with Czech; the
    split run's Bulgarian log-odds higher by ``difference``, its Russian lower by ``seen_cost``."""
    rng = np.random.default_rng(rng_seed)
    runs = [("english-only", "english-only", 0.0, 0.0), ("dose", "dose-ru-12", 1.0, 1.0),
            ("dose", "dose-ru+cs-12", 1.0 - seen_cost, 1.0 + difference)]
    prompt = rng.normal(0, 1.0, n)
    rows = []
    for recipe, name, ru, bg in runs:
        for s in seeds:
            seed_effect = rng.normal(0, 0.1)
            for lang, level in (("en", None), ("ru", ru), ("bg", bg)):
                for i in range(n):
                    rows.append({"method": "lora", "recipe": recipe, "name": name, "seed": s, "lang": lang,
                                 "prompt_id": f"p{i}", "model": "m", "nll_per_byte": 1.0 + rng.normal(0, 0.01),
                                 "lang_logodds": None if level is None else level + seed_effect + prompt[i]
                                 + rng.normal(0, 0.3), "gate_reason": "ok", "gate": True, "gated_chrf": 1.0,
                                 "judge": None, "gated_judge": None})
    return F.with_measures(pd.DataFrame(rows))


def test_the_mix_table_finds_a_planted_difference_and_says_nothing_without_one():
    table = D.mix_table(mix_answers(difference=1.5, seen_cost=1.0), "lora", "ru", "cs", ["bg"], [12])
    rob = table[table["measure"] == "robustness"].set_index("languages")
    assert rob.loc["bg", "verdict"] == "two languages higher" and rob.loc["bg", "two - one"] == pytest.approx(1.5, abs=0.3)
    assert rob.loc["ru", "verdict"] == "one language higher" and not rob.loc["bg", "seen"] and rob.loc["ru", "seen"]
    assert rob.loc["bg", "one language - English-only"] == pytest.approx(1.0, abs=0.3)
    assert (table["rows in family"] == len(table)).all() and (rob["seeds"] == 3).all()
    assert (rob["detectable"] > 0).all()
    headline = D.mix_headline(table, "cs")
    assert headline.startswith("with cs as the second language, robustness on bg at dose 12: two languages minus one +")
    assert "two languages higher" in headline and " on ru " not in headline
    quiet = D.mix_table(mix_answers(), "lora", "ru", "cs", ["bg"], [12])
    assert (quiet["verdict"] == "no difference shown").all()
    assert D.mix_table(mix_answers(), "lora", "ru", "", ["bg"], [12]).empty
    study = D.DoseStudy(mix_answers(), "lora", "ru", [12], 24, ["bg"], 0.5, 0.05, [], "m", "cs")
    assert study.mix_table().equals(quiet)
    rates = study.mix_error_rates(tables=3)
    assert rates["tables"] == 3 and rates["seeds"] == 3 and rates["prompts"] == 30


def test_mix_error_rates_count_on_few_tables():
    rates = D.simulate_mix_error_rates(SPREADS, "ru", "cs", ["bg"], [12], [1, 2, 3], 24, tables=10,
                                       differences={"quality": 0.0, "robustness": 10.0, "answer_language": 2.0})
    assert rates["tables"] == 10 and rates["seeds"] == 3
    assert rates["false verdict rate, no difference"] <= 0.3 and rates["power, two languages higher"] == 1.0


@pytest.mark.slow
def test_the_mix_procedure_false_verdict_rate_is_at_most_alpha():
    """The second axis on 400 simulated builds of its CPU design (one dose, three seeds, 24 prompts,
    one unseen language) with seed-heavy spreads: with no difference between one language and two,
    some row says one is higher in at most alpha of builds (400 tables tell 5% from 10%)."""
    rates = D.simulate_mix_error_rates(SPREADS, "ru", "cs", ["bg"], [12], [42, 43, 44], 24, tables=400)
    print(rates)
    assert rates["false verdict rate, no difference"] <= 0.07


def test_the_second_language_is_read_beside_the_training_languages(tmp_path):
    """The second language (not a training language of the CPU default) joins the dose seeds'
    samples with English's ids, and changes no id the training languages use: the pool, the
    held-out ids and every seed's sample are those of the grid without it."""
    from polyalpaca.config import load_profile
    from polyalpaca.grid import Experiment

    on = Experiment(load_profile("cpu"), tmp_path / "on")
    off = Experiment(load_profile("cpu", {"grid.dose_mix_language": ""}), tmp_path / "off")
    assert on.profile.grid.dose_mix_language == "cs" and "cs" not in on.pool().train
    for seed in on.profile.grid.seeds:
        a, b = on.split(seed), off.split(seed)
        assert {l: [r.id for r in a.train[l]] for l in b.train} == {l: [r.id for r in v] for l, v in b.train.items()}
        assert a.validation_ids == b.validation_ids
    first = on.split(42)
    assert [r.id for r in first.train["cs"]] == [r.id for r in first.train["en"]]
    assert {r.lang for r in first.train["cs"] + first.validation["cs"]} == {"cs"}
    assert "cs" not in on.split(45).train  # no dose runs on the fourth seed (grid.dose_seeds = 3)
    assert [t.name for t in on.training_sets(42) if t.recipe == "dose"] == ["dose-ru-12", "dose-ru+cs-12"]
