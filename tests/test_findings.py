"""Claims, bootstrap and tables on synthetic answer frames with known effects."""
import numpy as np
import pandas as pd
import pytest

from polyalpaca import findings as F


def frame(effects: dict[tuple[str, str], float], langs=("en", "ru", "zh", "bg"), n=30, seed=0, gate_rate=None):
    """Answers whose gated_chrf is effect + noise, per (method, recipe)."""
    rng = np.random.default_rng(seed)
    rows = []
    for (method, recipe), effect in effects.items():
        for lang in langs:
            for i in range(n):
                rate = (gate_rate or {}).get((method, recipe), 1.0)
                gate = bool(rng.random() < rate)
                chrf = max(0.0, effect + rng.normal(0, 1))
                rows.append({"model": "m", "method": method, "recipe": recipe, "lang": lang, "prompt_id": f"p{i}",
                             "chrf": chrf, "gated_chrf": chrf if gate else 0.0, "gate": gate, "line_pass": gate,
                             "gate_reason": "ok" if gate else "wrong_language", "detected": lang if gate else "en",
                             "correct": None, "judge": None, "gated_judge": None, "judge_status": None})
    return pd.DataFrame(rows)


def test_paired_bootstrap_is_seeded_and_centred():
    a, b = np.arange(50) + 2.0, np.arange(50).astype(float)
    mean, low, high = F.paired_bootstrap(a, b, seed=1)
    assert mean == 2.0 and low == high == 2.0
    x = np.random.default_rng(0).normal(0, 1, 40)
    assert F.paired_bootstrap(x, 0 * x, seed=3) == F.paired_bootstrap(x, 0 * x, seed=3)
    assert F.verdict(0.1, 0.5) == "agrees" and F.verdict(-0.5, -0.1) == "disagrees"
    assert F.verdict(-0.1, 0.1) == "inconclusive" and F.verdict(-0.5, -0.1, claim_positive=False) == "agrees"


def test_claims_follow_the_planted_effects():
    effects = {("lora", "monolingual"): 5, ("lora", "multilingual"): 8, ("lora", "english-only"): 4,
               ("lora", "downsampled"): 6, ("full", "monolingual"): 8, ("full", "multilingual"): 5,
               ("full", "english-only"): 4, ("full", "downsampled"): 6}
    gates = {("lora", "english-only"): 0.5, ("full", "english-only"): 0.5}
    answers = frame(effects, gate_rate=gates)
    claims = F.claims_table(answers, seen=["en", "ru", "zh"], unseen=["bg"])
    verdicts = {(row["finding"], row["this run tests"].split(",")[0]): row["verdict"] for _, row in claims.iterrows()}
    assert claims.iloc[0]["verdict"] == "agrees"  # 1: LoRA multilingual > monolingual
    assert claims.iloc[1]["verdict"] == "agrees"  # 2: full monolingual > multilingual
    assert set(claims[claims["finding"] == 4]["verdict"]) == {"agrees"}  # downsampled more robust
    assert claims.iloc[-1]["verdict"] == "not tested"
    assert len(verdicts) >= 6


def test_summary_and_robustness_gap():
    answers = frame({("lora", "english-only"): 5, ("lora", "multilingual"): 5},
                    gate_rate={("lora", "english-only"): 0.5})
    table = F.summary_table(answers)
    eo = table[(table.recipe == "english-only")]
    assert (eo["gate"] < 0.8).all() and (table[table.recipe == "multilingual"]["gate"] == 1).all()
    gap = F.robustness_gap(answers, ["en", "ru", "zh"]).set_index("recipe")["gap"]
    assert gap["english-only"] > 1.0 and gap["multilingual"] == pytest.approx(0.0)


def test_judge_totals_when_judged():
    answers = frame({("lora", "multilingual"): 5}, n=50)
    answers["judge"] = 3
    answers["gated_judge"] = answers["judge"] * answers["gate"].astype(int)
    answers["judge_status"] = "scored"
    table = F.summary_table(answers)
    assert (table["judge_total"] == 150).all() and (table["judge_normalised"] == 1.0).all()
    assert F.score_column(answers) == "gated_judge"
