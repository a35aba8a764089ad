"""Measures, the claims table, its tuning rows and its simulated error rates, on synthetic answer
frames with known effects."""
import numpy as np
import pandas as pd
import pytest

from polyalpaca import findings as F

RECIPES = ["monolingual", "multilingual", "english-only", "downsampled"]


def frame(quality: dict, robust: dict | None = None, langs=("en", "ru", "zh", "bg"), n=30, seeds=(1, 2, 3),
          prompt_sd=0.0, seed_sd=0.0, noise=0.05, rng_seed=0):
    """Answers whose NLL per byte is -(quality effect) + noise and whose log-odds is the robustness
    effect + noise, per (method, recipe); optional prompt effects shared across languages and seed
    effects shared across prompts."""
    rng = np.random.default_rng(rng_seed)
    prompt_effect = rng.normal(0, prompt_sd, n)
    rows = []
    for (method, recipe), q in quality.items():
        for s in seeds:
            seed_effect = rng.normal(0, seed_sd)
            for lang in langs:
                if recipe == "monolingual" and lang == "bg":
                    continue
                for i in range(n):
                    r = (robust or {}).get((method, recipe), 0.0)
                    wrong = bool(rng.random() < (0.5 if recipe == "english-only" and lang != "en" else 0.0))
                    rows.append({"model": "m", "method": method, "recipe": recipe, "seed": s, "lang": lang,
                                 "prompt_id": f"p{i}", "nll_per_byte": -(q + prompt_effect[i] + seed_effect
                                                                           + rng.normal(0, noise)),
                                 "lang_logodds": None if lang == "en" else r + rng.normal(0, noise),
                                 "gate": not wrong, "gate_reason": "wrong_language" if wrong else "ok",
                                 "detected": "en" if wrong else lang, "chrf": 10.0, "gated_chrf": 10.0,
                                 "correct": None, "judge": None, "gated_judge": None, "judge_status": None})
    return pd.DataFrame(rows)


def with_base(answers: pd.DataFrame, nll: float = 1.0) -> pd.DataFrame:
    """``answers`` plus an untuned base model whose NLL per byte is ``nll`` on every prompt."""
    one = answers[answers["seed"] == answers["seed"].min()].drop_duplicates(["prompt_id", "lang"]).copy()
    one = one.assign(method="base", recipe="base", seed=np.nan, nll_per_byte=nll)
    return pd.concat([answers, one], ignore_index=True)


def test_a_prompt_is_one_unit_across_its_languages():
    """Differences shared by all languages of a prompt: the effect is measured over 30 prompts,
    not 30 x 4 pairs, and prompt effects common to both recipes cancel."""
    answers = frame({("lora", "multilingual"): 1.0, ("lora", "english-only"): 0.0}, prompt_sd=1.0, noise=0.01)
    e = F.contrast(F.with_measures(answers), "lora", "multilingual", "english-only", ["ru", "zh", "bg"], "quality")
    assert e.mean == pytest.approx(1.0, abs=0.01) and e.prompts == 30 and e.se < 0.01


def test_quality_is_the_relative_gain_over_the_base_model():
    answers = with_base(frame({("lora", "multilingual"): -0.8}, noise=0.0, seeds=(1,)), nll=1.0)
    data = F.with_measures(answers)
    tuned = data[data["method"] == "lora"]
    assert tuned["quality"].to_numpy() == pytest.approx(20.0)  # NLL 0.8 against 1.0: 20% lower
    assert (data[data["method"] == "base"]["quality"] == 0).all()
    assert F.measure_names(answers)["quality"].startswith("gain over the base model")


def test_claims_follow_the_planted_effects_and_count_each_contrast_once():
    quality = {("lora", "monolingual"): 0.0, ("lora", "multilingual"): 0.3, ("lora", "english-only"): -0.5,
               ("lora", "downsampled"): 0.01, ("full", "monolingual"): 0.5, ("full", "multilingual"): 0.0,
               ("full", "english-only"): -0.5, ("full", "downsampled"): -0.2}
    robust = {("lora", "english-only"): -5, ("lora", "downsampled"): 5, ("full", "english-only"): -5,
              ("full", "downsampled"): 5}
    claims = F.claims_table(frame(quality, robust), seen=["en", "ru", "zh"], unseen=["bg"],
                            margins={"quality": 0.3})
    assert not claims["contrast"].duplicated().any() and set(claims["family"]) == {"claims"}  # no base model
    by = {(r["finding"], r["method"], r["measure"]): r for _, r in claims.iloc[:-1].iterrows()}
    by.update({(f, m): r for (f, m, measure), r in by.items() if measure != "answer_language"})
    assert by[("1", "lora")]["verdict"] == "agrees" and by[("1", "lora")]["test"] == "non-inferiority"
    assert by[("2", "full")]["verdict"] == "agrees"
    assert by[("3, 4", "lora")]["verdict"] == "agrees" and by[("3", "full")]["verdict"] == "agrees"
    # downsampled vs monolingual, LoRA: +0.01 is within the 0.3 margin: non-inferior
    assert by[("4 (headline)", "lora")]["verdict"] == "agrees"
    # full: monolingual is 0.7 better than downsampled, beyond the margin: inferior
    assert by[("4 (headline)", "full")]["verdict"] == "disagrees"
    assert claims.iloc[-1]["verdict"] == "not tested"
    assert (claims["detectable effect"].dropna() > 0).all()


def test_fewer_than_three_seeds_is_exploratory_and_not_counted():
    quality = {("lora", r): 0.0 for r in RECIPES}
    quality[("lora", "multilingual")] = 1.0
    claims = F.claims_table(frame(quality, seeds=(1, 2)), seen=["en", "ru"], unseen=["bg"])
    tested = claims[claims["verdict"] != "not tested"]
    assert tested["verdict"].str.startswith("exploratory").all()
    counts = F.verdict_counts(claims)
    assert counts["agrees"] == 0 and counts["exploratory"] == len(tested)


def test_summary_seed_spread_and_robustness_measure():
    answers = frame({("lora", "english-only"): 0.0, ("lora", "multilingual"): 0.0},
                    robust={("lora", "english-only"): -3.0, ("lora", "multilingual"): 2.0}, seed_sd=0.2)
    table = F.summary_table(answers)
    eo = table[table.recipe == "english-only"]
    assert (eo[eo.lang != "en"]["gate"] < 0.8).all() and (table[table.recipe == "multilingual"]["gate"] == 1).all()
    assert set(table["seeds"]) == {3}
    spread = F.seed_spread(answers).set_index("recipe")
    assert spread.loc["multilingual", "robustness mean"] == pytest.approx(2.0, abs=0.05)
    assert spread.loc["english-only", "quality sd across seeds"] > 0.01
    # English prompts carry no robustness value (0 by construction)
    assert F.with_measures(answers).query("lang == 'en'")["robustness"].isna().all()


def test_judge_totals_when_judged():
    answers = frame({("lora", "multilingual"): 0.0}, n=50, seeds=(1,))
    answers["judge"] = 3
    answers["gated_judge"] = answers["judge"] * answers["gate"].astype(int)
    answers["judge_status"] = "scored"
    table = F.summary_table(answers)
    assert (table["judge total"] == 150).all() and (table["judge normalised"] == 1.0).all()
    assert F.measure_names(answers)["quality"] == "judge rating x language gate"


def test_worked_interval_is_the_textbook_t_interval():
    table = F.worked_interval([3, 2, 3, 1], [2, 2, 1, 1]).iloc[0]
    sd = np.std([1, 0, 2, 0], ddof=1)
    assert table["mean difference"] == pytest.approx(0.75) and table["sd"] == pytest.approx(sd)
    assert table["95% low"] == pytest.approx(0.75 - 3.182446 * sd / 2, rel=1e-5)


def test_tuning_rows_and_not_assessable_quality_verdicts():
    """Recipes that do not beat the base model on quality carry no quality verdict between them;
    robustness rows are not affected."""
    nothing = {("lora", r): -1.0 for r in RECIPES}  # NLL 1.0 everywhere: no gain over the base
    robust = {("lora", "english-only"): -5, ("lora", "downsampled"): 5}
    claims = F.claims_table(with_base(frame(nothing, robust, noise=0.01)), seen=["en", "ru", "zh"], unseen=["bg"])
    tuning = claims[claims["family"] == "tuning"]
    assert len(tuning) and (tuning[tuning["measure"] == "quality"]["verdict"] == "no detectable change").all()
    rows = claims[(claims["family"] == "claims") & (claims["prompts"] > 0)]
    assert rows[rows["measure"] == "quality"]["verdict"].str.startswith("not assessable").all()
    assert (rows[rows["measure"] == "robustness"]["verdict"] == "agrees").all()
    gains = {("lora", r): -0.8 for r in RECIPES}  # every recipe 20% better than the base
    gains[("lora", "multilingual")] = -0.7
    claims = F.claims_table(with_base(frame(gains, noise=0.01)), seen=["en", "ru", "zh"], unseen=["bg"],
                            margins={"quality": 1.0})
    tuning = claims[(claims["family"] == "tuning") & (claims["measure"] == "quality") & (claims["prompts"] > 0)]
    assert (tuning["verdict"] == "improves").all()
    row = claims[(claims["finding"] == "3") & (claims["method"] == "lora")].iloc[0]
    assert row["verdict"] == "agrees" and row["effect"] == pytest.approx(10.0, abs=0.5)  # 30% vs 20% gain


@pytest.mark.slow
@pytest.mark.parametrize("methods, seeds, prompts", [(("lora", "full"), [42, 43, 44], 30),
                                                     (("lora",), [42, 43, 44, 45], 24)],
                         ids=["both-methods-3-seeds", "default-lora-4-seeds"])
def test_simulated_false_verdict_rates_are_at_most_alpha(methods, seeds, prompts):
    """The claims family with no recipe effect, and with every non-inferiority row's true effect at
    its margin, over enough simulated builds to tell 5% from 10% (seed-heavy spreads, twice the
    seed spread of the default build's robustness), for the earlier three-seed grid of both
    methods and for the default's design (LoRA, four seeds, 24 prompts)."""
    components = {"quality": (3.0, 2.0, 3.0), "robustness": (1.5, 2.0, 1.5), "answer_language": (0.1, 0.1, 0.3)}
    rates = F.simulate_error_rates(components, ["en", "ru"], ["bg"], seeds, prompts, alpha=0.05,
                                   margins={"quality": 1.0, "robustness": 1.0, "answer_language": 0.05}, tables=300,
                                   methods=methods)
    print(rates)
    assert rates["false verdict rate, no effect"] <= 0.07
    assert rates["non-inferiority agrees rate, effect at the margin"] <= 0.07


def test_more_seeds_shrink_the_detectable_effect_and_the_build_seeds_match_the_table():
    """The power table reproduces the claims table's detectable effect at the build's own number of
    seeds, falls with more seeds (the seed part's t quantile and standard error both fall), and
    counts a row as found when its effect reaches the detectable effect."""
    gains = {("lora", r): -0.8 for r in RECIPES}
    claims = F.claims_table(with_base(frame(gains, seed_sd=0.02, noise=0.01)), seen=["en", "ru", "zh"], unseen=["bg"])
    power = F.power_by_seeds(claims, alpha=0.05, seeds=(3, 5, 8))
    tuning = claims[(claims["family"] == "tuning") & (claims["prompts"] > 1)]
    assert len(power) == len(tuning)
    assert power["detectable, 3 seeds"].to_numpy() == pytest.approx(tuning["detectable effect"].to_numpy())
    assert (power["detectable, 5 seeds"] < power["detectable, 3 seeds"]).all()
    assert (power["detectable, 8 seeds"] < power["detectable, 5 seeds"]).all()
    assert (power["threshold, 5 seeds"] < power["detectable, 5 seeds"]).all()
    assert (power["threshold, 5 seeds"] < power["threshold, 3 seeds"]).all()
    found = F.power_summary(power)
    assert set(found) == {3, 5, 8} and found[3] <= found[5] <= found[8] <= len(power)


def test_a_weighted_combination_pairs_seeds_and_prompts_as_by_hand():
    """``Cells.combination`` against the same matrix built by hand from the frame: each recipe's
    per-(seed, prompt) mean over the languages, the seeds both recipes have (the base model's one
    row for every seed), the prompts with every value; the contrast A - B is the weights (+1, -1)."""
    quality = {("lora", "multilingual"): 0.3, ("lora", "english-only"): -0.5, ("lora", "downsampled"): 0.1}
    answers = with_base(frame(quality, seeds=(1, 2, 3), prompt_sd=1.0, seed_sd=0.2, noise=0.1), nll=1.0)
    answers = answers[~((answers["recipe"] == "downsampled") & (answers["seed"] == 3))]  # a seed missing
    answers = answers[~((answers["recipe"] == "english-only") & (answers["prompt_id"] == "p4") & (answers["lang"] == "zh"))]
    data = F.with_measures(answers)
    langs = ["ru", "zh"]

    def by_hand(recipe):
        rows = data[(data["recipe"] == recipe) & data["lang"].isin(langs)]
        wide = rows.groupby(["seed", "prompt_id", "lang"], dropna=False)["quality"].mean().unstack("lang")
        return wide.reindex(columns=langs).mean(axis=1, skipna=False).unstack("prompt_id")

    ml, eo, ds, base = (by_hand(r) for r in ("multilingual", "english-only", "downsampled", "base"))
    expected = 1.0 * ds.loc[[1, 2]] + (0.5 - 1.0) * eo.loc[[1, 2]] - 0.5 * ml.loc[[1, 2]]
    expected = expected.dropna(axis=1).reindex(columns=sorted(expected.dropna(axis=1).columns))
    cells = F.Cells(data)
    got = cells.combination("lora", [(1.0, "downsampled"), (-0.5, "english-only"), (-0.5, "multilingual")], langs,
                            "quality")
    assert got.shape == (2, 29) == expected.shape  # seeds 1 and 2; prompt p4 lacks a zh answer
    assert got == pytest.approx(expected.to_numpy(), abs=1e-12)
    against_base = cells.combination("lora", [(1.0, "multilingual"), (-1.0, "base")], langs, "quality")
    assert against_base == pytest.approx((ml - base.to_numpy()[0]).to_numpy(), abs=1e-12)
    e = cells.contrast("lora", "multilingual", "english-only", langs, "quality")
    assert e == cells.effect("lora", [(1.0, "multilingual"), (-1.0, "english-only")], langs, "quality")
    assert e.seeds == 3 and e.prompts == 29
    assert cells.combination("lora", [(1.0, "monolingual"), (-1.0, "base")], langs, "quality").size == 0  # no models
