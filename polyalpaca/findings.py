"""From scored answers to the paper's questions: score tables, bootstrap intervals, plots and
a claims table with a verdict per finding.

The score of an answer is the judge's rating x the language gate when a judge ran; offline it is
chrF against our reference answer x the language gate (``gated_chrf``, 0..100). Verdicts use a
paired bootstrap over prompts (seeded): a claim "A beats B" *agrees* when the 95% interval of
mean(A - B) lies above 0, *disagrees* when it lies below 0, and is *inconclusive* otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RECIPE_ORDER = ["base", "monolingual", "multilingual", "english-only", "downsampled"]
N_BOOT = 2000


def score_column(answers: pd.DataFrame) -> str:
    """The main score: the gated judge score when present, else gated chrF."""
    if "gated_judge" in answers and answers["gated_judge"].notna().any():
        return "gated_judge"
    return "gated_chrf"


def summary_table(answers: pd.DataFrame, score: str | None = None) -> pd.DataFrame:
    """Mean score, gate pass rate and its parts per (model, method, recipe, language)."""
    score = score or score_column(answers)
    g = answers.groupby(["model", "method", "recipe", "lang"], sort=False)
    out = g.agg(n=("prompt_id", "size"), score=(score, "mean"), ungated_chrf=("chrf", "mean"),
                gate=("gate", "mean"), line_pass=("line_pass", "mean"),
                wrong_language=("gate_reason", lambda s: (s == "wrong_language").mean()),
                echo=("gate_reason", lambda s: (s == "echo").mean()),
                loop=("gate_reason", lambda s: (s == "loop").mean()),
                english=("detected", lambda s: (s == "en").mean()))
    acc = answers.dropna(subset=["correct"]).groupby(["model", "method", "recipe", "lang"])["correct"].mean()
    out["accuracy"] = acc.astype(float)
    if "gated_judge" in answers and answers["gated_judge"].notna().any():
        # The paper's per-language total: the sum of gated 1-3 ratings (0..150 for 50 prompts),
        # also normalised to 0..1 so sets of other sizes compare. Unparsed replies are left out.
        judged = answers.dropna(subset=["gated_judge"]).groupby(["model", "method", "recipe", "lang"])
        out["judge_total"] = judged["gated_judge"].sum()
        out["judge_scored"] = judged["gated_judge"].size()
        out["judge_normalised"] = out["judge_total"] / (3 * out["judge_scored"])
        out["judge_unparsed"] = g["judge_status"].agg(lambda s: (s == "unparsed").sum())
    return out.reset_index()


def robustness_gap(answers: pd.DataFrame, seen: list[str]) -> pd.DataFrame:
    """Score before the language gate minus after it, averaged over the seen languages (the
    paper's language-robustness measure: a bigger gap means more good answers in the wrong language)."""
    before = "judge" if "gated_judge" in answers and answers["gated_judge"].notna().any() else "chrf"
    after = score_column(answers)
    sub = answers[answers["lang"].isin(seen)]
    per_lang = sub.groupby(["model", "method", "recipe", "lang"]).agg(before=(before, "mean"), after=(after, "mean"))
    per_lang["gap"] = per_lang["before"] - per_lang["after"]
    return per_lang.groupby(["model", "method", "recipe"])["gap"].mean().reset_index()


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int = 0, n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """Mean of a - b over paired items and its 95% percentile bootstrap interval."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    if len(diff) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def verdict(low: float, high: float, claim_positive: bool = True) -> str:
    if np.isnan(low):
        return "not tested"
    if low > 0:
        return "agrees" if claim_positive else "disagrees"
    if high < 0:
        return "disagrees" if claim_positive else "agrees"
    return "inconclusive"


def compare(answers: pd.DataFrame, method: str, recipe_a: str, recipe_b: str, langs: list[str],
            value: str, seed: int = 0) -> tuple[float, float, float, int]:
    """Paired difference recipe_a - recipe_b of ``value`` over (language, prompt) pairs."""
    sub = answers[(answers["method"] == method) & answers["lang"].isin(langs)]
    a = sub[sub["recipe"] == recipe_a].set_index(["lang", "prompt_id"])[value]
    b = sub[sub["recipe"] == recipe_b].set_index(["lang", "prompt_id"])[value]
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    mean, low, high = paired_bootstrap(joined["a"].astype(float).values, joined["b"].astype(float).values, seed)
    return mean, low, high, len(joined)


@dataclass
class Claim:
    number: int
    paper: str
    test: str
    method: str
    a: str
    b: str
    langs: list[str]
    value: str
    positive: bool = True


def paper_claims(seen: list[str], unseen: list[str], methods: list[str], score: str) -> list[Claim]:
    """The paper's findings, each as a paired comparison this run can make."""
    non_en = [l for l in seen if l != "en"]
    non_en_hard = [l for l in non_en if l in ("bg", "ru", "zh")] or non_en
    claims = []
    if "lora" in methods:
        claims.append(Claim(1, "LoRA: multilingual tuning is on par with or better than monolingual (except English)",
                            "multilingual - monolingual, LoRA, seen non-English languages", "lora", "multilingual",
                            "monolingual", non_en, score))
    if "full" in methods:
        claims.append(Claim(2, "Full-parameter: monolingual tends to beat multilingual",
                            "monolingual - multilingual, full tuning, seen non-English languages", "full",
                            "monolingual", "multilingual", non_en, score))
    for m in methods:
        claims.append(Claim(3, "English-only tuning is weak for languages like bg, ru, zh",
                            f"english-only - multilingual, {m}, {'/'.join(non_en_hard)}", m, "english-only",
                            "multilingual", non_en_hard, score, positive=False))
        claims.append(Claim(3, "English-only is the least language-robust recipe",
                            f"gate pass: english-only - downsampled, {m}, seen non-English", m, "english-only",
                            "downsampled", non_en, "gate", positive=False))
        claims.append(Claim(4, "Downsampled multilingual (1 unit) is more robust than English-only (1 unit)",
                            f"gate pass: downsampled - english-only, {m}, all test languages", m, "downsampled",
                            "english-only", non_en + unseen, "gate"))
        if unseen:
            claims.append(Claim(5, "Unseen languages: downsampled beats full multilingual",
                                f"downsampled - multilingual, {m}, unseen {'/'.join(unseen)}", m, "downsampled",
                                "multilingual", unseen, score))
    if "full" in methods and unseen:
        claims.append(Claim(5, "Full tuning, unseen languages: English-only close to or above multilingual",
                            f"english-only - multilingual, full, unseen {'/'.join(unseen)}", "full", "english-only",
                            "multilingual", unseen, score))
    return claims


def claims_table(answers: pd.DataFrame, seen: list[str], unseen: list[str], seed: int = 0) -> pd.DataFrame:
    score = score_column(answers)
    methods = [m for m in ("lora", "full") if m in set(answers["method"])]
    rows = []
    for c in paper_claims(seen, unseen, methods, score):
        mean, low, high, n = compare(answers.assign(gate=answers["gate"].astype(float)), c.method, c.a, c.b,
                                     c.langs, c.value, seed)
        rows.append({"finding": c.number, "paper says": c.paper, "this run tests": c.test, "measure": c.value,
                     "pairs": n, "mean difference": round(mean, 3), "95% CI low": round(low, 3),
                     "95% CI high": round(high, 3), "verdict": verdict(low, high, c.positive)})
    rows.append({"finding": 6, "paper says": "~7B models (LoRA): multilingual on par or better in 24 of 30 cases",
                 "this run tests": "needs five ~7B base models (paper profile)", "measure": "-", "pairs": 0,
                 "mean difference": float("nan"), "95% CI low": float("nan"), "95% CI high": float("nan"),
                 "verdict": "not tested"})
    return pd.DataFrame(rows)


# --- plots ---------------------------------------------------------------------------------

def _setup():
    import seaborn as sns

    # Large enough to read when a figure is scaled to the page's width or printed.
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=1.15)
    return sns


def plot_scores_by_recipe(answers: pd.DataFrame, value: str | None = None, title: str = ""):
    """Per-language score by recipe, LoRA and full side by side, with bootstrap 95% intervals."""
    sns = _setup()
    value = value or score_column(answers)
    order = [r for r in RECIPE_ORDER if r in set(answers["recipe"])]
    data = answers[answers["method"] != "base"]
    g = sns.catplot(data=data, kind="bar", x="lang", y=value, hue="recipe", hue_order=[r for r in order if r != "base"],
                    col="method", errorbar=("ci", 95), n_boot=1000, seed=0, height=3.6, aspect=1.5, legend_out=True)
    g.set_axis_labels("test language", value.replace("_", " "))
    if title:
        g.figure.suptitle(title, y=1.03)
    return g.figure


def plot_one_unit(answers: pd.DataFrame, value: str = "gate"):
    """The two one-unit options: English-only vs downsampled multilingual, per language."""
    sns = _setup()
    data = answers[answers["recipe"].isin(["english-only", "downsampled"])].assign(**{value: lambda d: d[value].astype(float)})
    g = sns.catplot(data=data, kind="point", x="lang", y=value, hue="recipe", col="method", errorbar=("ci", 95),
                    n_boot=1000, seed=0, height=3.4, aspect=1.4, dodge=0.3)
    g.set_axis_labels("test language", "language gate pass rate" if value == "gate" else value)
    return g.figure


def plot_robustness(gap: pd.DataFrame):
    """The robustness gap per recipe, one panel per tuning method (the untuned base model, whose
    gap is on another scale, stays in the table)."""
    sns = _setup()
    gap = gap[gap["method"] != "base"]
    g = sns.catplot(data=gap, kind="bar", x="recipe", y="gap", col="method", height=3.4, aspect=1.3,
                    order=[r for r in RECIPE_ORDER if r in set(gap["recipe"])])
    g.set_axis_labels("recipe", "score lost to the language gate")
    g.tick_params(axis="x", labelrotation=20)
    return g.figure


def plot_losses(histories: pd.DataFrame):
    """Training and validation loss per run (one panel per method)."""
    sns = _setup()
    g = sns.relplot(data=histories, kind="line", x="epoch", y="loss", hue="run", style="split", col="method",
                    height=3.4, aspect=1.4, marker="o", markersize=4)
    g.set_axis_labels("epoch", "loss")
    return g.figure


def detector_agreement(answers: pd.DataFrame) -> pd.DataFrame:
    """Per test language: how often langdetect (the gate's detector) and fastText (lid.176) agree
    on the answers, and how often fastText alone would have passed them."""
    from .langid import detect_language_fasttext

    rows = []
    for lang, group in answers[answers["detected"].notna()].groupby("lang"):
        second = group["response"].map(detect_language_fasttext)
        rows.append({"lang": lang, "answers": len(group), "agreement": float((second == group["detected"]).mean()),
                     "langdetect says target": float((group["detected"] == lang).mean()),
                     "fastText says target": float((second == lang).mean())})
    return pd.DataFrame(rows)
