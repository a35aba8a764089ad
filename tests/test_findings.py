"""Claims, the hierarchical bootstrap, Holm and tables on synthetic answer frames with known effects."""
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


def test_bootstrap_is_seeded_and_centred():
    a = np.tile(np.arange(20.0) + 2, (3, 1))
    b = np.tile(np.arange(20.0), (3, 1))
    e = F.hierarchical_bootstrap(a, b, seed=1)
    assert e.mean == 2.0 and e.low == pytest.approx(2.0) and e.high == pytest.approx(2.0)
    x = np.random.default_rng(0).normal(0, 1, (3, 40))
    assert F.hierarchical_bootstrap(x, 0 * x, seed=3).low == F.hierarchical_bootstrap(x, 0 * x, seed=3).low


def test_a_prompt_is_one_cluster_across_its_languages():
    """Prompt effects shared by all languages: the interval reflects 30 prompts, not 30 x 4 pairs."""
    answers = frame({("lora", "multilingual"): 1.0, ("lora", "english-only"): 0.0}, prompt_sd=0.0, noise=1.0,
                    seeds=(1,))
    answers.loc[answers.recipe == "english-only", "nll_per_byte"] = answers.loc[
        answers.recipe == "multilingual", "nll_per_byte"].to_numpy() + 1.0  # same noise: pure prompt-level
    data = F.with_measures(answers)
    e = F.contrast(data, "lora", "multilingual", "english-only", ["ru", "zh", "bg"], "quality", seed=0)
    assert e.mean == pytest.approx(1.0) and e.se == pytest.approx(0.0, abs=1e-9)
    noisy = F.with_measures(frame({("lora", "multilingual"): 1.0, ("lora", "english-only"): 0.0}, prompt_sd=1.0,
                                  noise=0.01, seeds=(1,)))
    e = F.contrast(noisy, "lora", "multilingual", "english-only", ["ru", "zh", "bg"], "quality", seed=0)
    # Prompt effects cancel in a paired contrast: the interval is narrow.
    assert e.high - e.low < 0.05 and e.prompts == 30


def test_seed_variance_widens_the_interval():
    effects = {("lora", "multilingual"): 0.5, ("lora", "english-only"): 0.0}
    calm = F.contrast(F.with_measures(frame(effects, seed_sd=0.0)), "lora", "multilingual", "english-only",
                      ["ru"], "quality")
    shaky = F.contrast(F.with_measures(frame(effects, seed_sd=0.5)), "lora", "multilingual", "english-only",
                       ["ru"], "quality")
    assert shaky.se > 5 * calm.se and shaky.seeds_a == 3


def test_holm_adjustment():
    assert F.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_claims_follow_the_planted_effects_and_count_each_contrast_once():
    quality = {("lora", "monolingual"): 0.0, ("lora", "multilingual"): 0.3, ("lora", "english-only"): -0.5,
               ("lora", "downsampled"): 0.01, ("full", "monolingual"): 0.5, ("full", "multilingual"): 0.0,
               ("full", "english-only"): -0.5, ("full", "downsampled"): 0.2}
    robust = {("lora", "english-only"): -5, ("lora", "downsampled"): 5, ("full", "english-only"): -5,
              ("full", "downsampled"): 5}
    claims = F.claims_table(frame(quality, robust), seen=["en", "ru", "zh"], unseen=["bg"],
                            margins={"quality": 0.05})
    assert not claims["contrast"].duplicated().any()
    by = {(r["finding"], r["contrast"].split(",")[1].strip()): r for _, r in claims.iloc[:-1].iterrows()}
    assert by[("1", "lora")]["verdict"] == "agrees" and by[("1", "lora")]["test"] == "non-inferiority"
    assert by[("2", "full")]["verdict"] == "agrees"
    assert by[("3, 4", "lora")]["verdict"] == "agrees" and by[("3", "full")]["verdict"] == "agrees"
    # downsampled vs monolingual, LoRA: +0.01 is within the 0.05 margin: non-inferior
    assert by[("4 (headline)", "lora")]["verdict"] == "agrees"
    # full: downsampled 0.2 below the English-heavy... here monolingual is 0.3 better: inferior
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


def test_worked_bootstrap_is_small_and_reproducible():
    table = F.worked_bootstrap([3, 2, 3, 1], [2, 2, 1, 1], n_boot=4, seed=0)
    assert len(table) == 4 and table.equals(F.worked_bootstrap([3, 2, 3, 1], [2, 2, 1, 1], n_boot=4, seed=0))
