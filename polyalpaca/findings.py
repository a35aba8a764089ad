"""From scored answers to the paper's questions: score tables, the claims table with its
statistics, and the figures.

**Measures** (oriented so that higher is better in every contrast):

- ``quality``: the judge's gated rating when a judge ran; offline, minus the negative
  log-likelihood per UTF-8 byte of the human reference answer (``polyalpaca.likelihood``): a
  score that does not depend on decoding or answer length.
- ``robustness``: the language log-odds, log P(reference in the prompt's language) - log
  P(English reference), on non-English prompts (0 by construction on English ones, so those are
  left out); without references, minus the wrong-language rate of the generated answers.

**Design.** The units that are independent are the training seeds (one trained model each) and
the test prompts: one prompt is the same question in every language, so a prompt is one cluster
across its translations. ``hierarchical_bootstrap`` resamples prompts (clusters, shared by both
recipes of a contrast: paired) and, independently for each recipe, seeds. Every row of the
claims table is one distinct contrast A - B within one tuning method; claims the paper states
as "on par or better" are non-inferiority tests with margins declared in the profile
(``findings.margins``) before any run; the others are superiority tests. The family is every
one-sided test of the table (each row tested in the paper's direction and in the opposite one),
with Holm's correction at ``findings.alpha``. A verdict from fewer than ``findings.min_seeds``
seeds is exploratory and kept out of the counts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

RECIPE_ORDER = ["base", "monolingual", "multilingual", "english-only", "downsampled"]
REASONS = ["ok", "wrong_language", "echo", "loop", "empty", "no_letters"]


# --- measures --------------------------------------------------------------------------------

def has_judge(answers: pd.DataFrame) -> bool:
    return "gated_judge" in answers and answers["gated_judge"].notna().any()


def has_likelihood(answers: pd.DataFrame) -> bool:
    return "nll_per_byte" in answers and answers["nll_per_byte"].notna().any()


def with_measures(answers: pd.DataFrame) -> pd.DataFrame:
    """``answers`` plus the columns ``quality``, ``robustness`` and ``wrong_language``."""
    out = answers.copy()
    out["wrong_language"] = (out["gate_reason"] == "wrong_language").astype(float)
    if has_judge(out):
        out["quality"] = out["gated_judge"].astype(float)
    elif has_likelihood(out):
        out["quality"] = -out["nll_per_byte"].astype(float)
    else:
        out["quality"] = out["gated_chrf"].astype(float)
    if has_likelihood(out) and "lang_logodds" in out and out["lang_logodds"].notna().any():
        out["robustness"] = out["lang_logodds"].astype(float)
    else:
        out["robustness"] = -out["wrong_language"]
    out.loc[out["lang"] == "en", "robustness"] = np.nan  # 0 by construction: not a finding
    return out


def measure_names(answers: pd.DataFrame) -> dict[str, str]:
    """What ``quality`` and ``robustness`` are in this run, in words."""
    quality = ("judge rating x language gate" if has_judge(answers) else
               "minus NLL per byte of the reference answer" if has_likelihood(answers) else "chrF x language gate")
    robustness = ("log-odds of the reference in the prompt's language vs the English reference"
                  if has_likelihood(answers) else "minus the wrong-language rate")
    return {"quality": quality, "robustness": robustness}


def summary_table(answers: pd.DataFrame) -> pd.DataFrame:
    """Per (method, recipe, language), averaged over seeds and prompts: quality, robustness, the
    gate and why answers failed it, chrF (secondary) and verifiable accuracy."""
    data = with_measures(answers)
    keys = ["method", "recipe", "lang"]
    g = data.groupby(keys, sort=False)
    out = g.agg(seeds=("seed", "nunique"), answers=("prompt_id", "size"))
    if has_likelihood(data):
        out["NLL/byte"] = g["nll_per_byte"].mean()
        out["log-odds"] = g["lang_logodds"].mean()
    out["gate"] = g["gate"].mean()
    for reason in REASONS[1:5]:
        out[reason.replace("_", " ")] = g["gate_reason"].agg(lambda s, r=reason: (s == r).mean())
    out["English answers"] = g["detected"].agg(lambda s: (s == "en").mean())
    out["chrF"] = g["chrf"].mean()
    acc = data.dropna(subset=["correct"]).groupby(keys)["correct"].mean()
    out["accuracy"] = acc.astype(float)
    if has_judge(data):
        # The paper's per-language total: the sum of gated 1-3 ratings (0..150 for 50 prompts)
        # per seed, averaged over seeds, and normalised to 0..1 so sets of other sizes compare.
        from .judge import gated_total

        judged = data.dropna(subset=["gated_judge"])
        per_seed = judged.groupby(keys + ["seed"])["gated_judge"].agg(lambda s: gated_total(s.tolist()))
        totals = pd.DataFrame(per_seed.tolist(), index=per_seed.index, columns=["total", "normalised"])
        out["judge total"] = totals["total"].groupby(level=keys).mean()
        out["judge normalised"] = totals["normalised"].groupby(level=keys).mean()
        out["judge unparsed"] = g["judge_status"].agg(lambda s: (s == "unparsed").sum())
    return out.reset_index()


def seed_spread(answers: pd.DataFrame) -> pd.DataFrame:
    """Per (method, recipe): each main score's mean over seeds and its spread across seeds (the
    standard deviation of the per-seed means): how much training variance there is."""
    data = with_measures(answers)
    data = data[data["method"] != "base"]
    per_seed = data.groupby(["method", "recipe", "seed"])[["quality", "robustness", "gate", "wrong_language"]].mean()
    grouped = per_seed.groupby(level=["method", "recipe"])
    out = grouped.mean().add_suffix(" mean").join(grouped.std(ddof=1).add_suffix(" sd across seeds"))
    out["seeds"] = grouped.size()
    return out.reset_index()


# --- the hierarchical bootstrap ------------------------------------------------------------

def cluster_matrix(data: pd.DataFrame, value: str) -> tuple[np.ndarray, list, list]:
    """(seeds x prompts) matrix of ``value`` averaged over the languages of each prompt."""
    table = data.groupby(["seed", "prompt_id"])[value].mean().unstack("prompt_id")
    return table.to_numpy(float), list(table.index), list(table.columns)


@dataclass
class Effect:
    """A - B with its bootstrap distribution."""

    mean: float
    low: float
    high: float
    se: float
    seeds_a: int
    seeds_b: int
    prompts: int
    boot: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))


def hierarchical_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> Effect:
    """The effect mean(A) - mean(B) and its percentile interval. ``a`` and ``b`` are (seeds x
    prompts) matrices over the same prompts (columns paired). Each resample draws prompts with
    replacement (the same draw for A and B) and, independently for A and for B, seeds with
    replacement."""
    rng = np.random.default_rng(seed)
    n_prompts = a.shape[1]
    if n_prompts == 0 or not len(a) or not len(b):
        nan = float("nan")
        return Effect(nan, nan, nan, nan, len(a), len(b), 0)
    w = rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=n_boot).astype(float)
    ua = rng.multinomial(len(a), np.full(len(a), 1 / len(a)), size=n_boot).astype(float)
    ub = rng.multinomial(len(b), np.full(len(b), 1 / len(b)), size=n_boot).astype(float)
    mean_a = np.einsum("bs,sp,bp->b", ua, a, w) / (len(a) * n_prompts)
    mean_b = np.einsum("bs,sp,bp->b", ub, b, w) / (len(b) * n_prompts)
    boot = mean_a - mean_b
    tail = (1 - level) / 2
    return Effect(float(a.mean() - b.mean()), float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail)),
                  float(boot.std(ddof=1)), len(a), len(b), n_prompts, boot)


def contrast(data: pd.DataFrame, method: str, recipe_a: str, recipe_b: str, langs: list[str], value: str,
             n_boot: int = 2000, seed: int = 0) -> Effect:
    """A - B of ``value`` within ``method`` over the prompts that both recipes answered in ``langs``."""
    sub = data[(data["method"] == method) & data["lang"].isin(langs)].dropna(subset=[value])
    ma, _, pa = cluster_matrix(sub[sub["recipe"] == recipe_a], value)
    mb, _, pb = cluster_matrix(sub[sub["recipe"] == recipe_b], value)
    common = [p for p in pa if p in set(pb)]
    ia, ib = [pa.index(p) for p in common], [pb.index(p) for p in common]
    a, b = ma[:, ia], mb[:, ib]
    keep = ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))  # prompts missing in some seed
    return hierarchical_bootstrap(a[:, keep], b[:, keep], n_boot=n_boot, seed=seed)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone), in input order."""
    p = np.asarray(p_values, float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


# --- the claims ------------------------------------------------------------------------------

@dataclass
class Claim:
    finding: str
    paper: str
    method: str
    a: str
    b: str
    langs: list[str]
    measure: str  # quality | robustness
    test: str  # superiority | non-inferiority

    def describe(self) -> str:
        return f"{self.a} - {self.b}, {self.method}, {self.measure}, {'/'.join(self.langs)}"


def paper_claims(seen: list[str], unseen: list[str], methods: list[str]) -> list[Claim]:
    """The paper's findings, one row per distinct contrast, each in the direction the paper
    reports (A - B > 0, or > -margin for "on par or better")."""
    non_en = [l for l in seen if l != "en"]
    hard = [l for l in non_en if l in ("bg", "ru", "zh")] or non_en
    claims = []
    if "lora" in methods and non_en:
        claims.append(Claim("1", "LoRA: multilingual tuning is on par with or better than monolingual (except English)",
                            "lora", "multilingual", "monolingual", non_en, "quality", "non-inferiority"))
    if "full" in methods and non_en:
        claims.append(Claim("2", "Full-parameter: monolingual tends to beat multilingual", "full", "monolingual",
                            "multilingual", non_en, "quality", "superiority"))
    for m in methods:
        if hard:
            claims.append(Claim("3", "English-only tuning is weak for bg, ru, zh", m, "multilingual",
                                "english-only", hard, "quality", "superiority"))
        claims.append(Claim("3, 4", "Downsampled multilingual (1 unit) is far more language-robust than "
                            "English-only (1 unit), the least robust recipe", m, "downsampled", "english-only",
                            non_en + unseen, "robustness", "superiority"))
        claims.append(Claim("4 (headline)", "At equal budget per language, downsampled multilingual is sometimes on "
                            "par with monolingual", m, "downsampled", "monolingual", seen, "quality",
                            "non-inferiority"))
        if unseen:
            claims.append(Claim("5", "Unseen languages: downsampled beats full multilingual", m, "downsampled",
                                "multilingual", unseen, "quality", "superiority"))
    if "full" in methods and unseen:
        claims.append(Claim("5", "Full tuning, unseen languages: English-only close to or above multilingual",
                            "full", "english-only", "multilingual", unseen, "quality", "non-inferiority"))
    return claims


def _p_at_least(boot: np.ndarray, threshold: float) -> float:
    """One-sided bootstrap p-value for H0: effect <= threshold (small when the effect is above)."""
    return float((np.sum(boot <= threshold) + 1) / (len(boot) + 1))


def claims_table(answers: pd.DataFrame, seen: list[str], unseen: list[str], alpha: float = 0.05,
                 margins: dict[str, float] | None = None, min_seeds: int = 3, n_boot: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """Every claim's effect, 95% interval, Holm-adjusted p-values and verdict."""
    margins = margins or {}
    data = with_measures(answers)
    methods = [m for m in ("lora", "full") if m in set(data["method"])]
    claims = paper_claims(seen, unseen, methods)
    rows, p_values = [], []
    for c in claims:
        e = contrast(data, c.method, c.a, c.b, c.langs, c.measure, n_boot=n_boot, seed=seed)
        margin = margins.get(c.measure, 0.0) if c.test == "non-inferiority" else 0.0
        if e.prompts:
            p_claim = _p_at_least(e.boot, -margin)  # H0: A - B <= -margin
            p_opposite = _p_at_least(-e.boot, margin if c.test == "non-inferiority" else 0.0)  # H0: A - B >= -margin / 0
        else:
            p_claim = p_opposite = float("nan")
        p_values += [p_claim, p_opposite]
        rows.append({"finding": c.finding, "paper says": c.paper, "contrast": c.describe(), "test": c.test,
                     "margin": margin if c.test == "non-inferiority" else None, "seeds": min(e.seeds_a, e.seeds_b),
                     "prompts": e.prompts, "effect": e.mean, "95% low": e.low, "95% high": e.high, "se": e.se})
    finite = [p for p in p_values if p == p]
    adjusted = iter(holm(finite)) if finite else iter([])
    family = len(finite)
    z = NormalDist().inv_cdf(1 - alpha / max(family, 1)) + NormalDist().inv_cdf(0.8)
    for i, row in enumerate(rows):
        pc, po = p_values[2 * i], p_values[2 * i + 1]
        row["p (Holm)"] = next(adjusted) if pc == pc else float("nan")
        row["p opposite (Holm)"] = next(adjusted) if po == po else float("nan")
        # Smallest true effect (beyond the margin) the run detects with 80% power at the family's
        # strictest Holm level: what it could have seen.
        row["detectable effect"] = z * row["se"] if row["se"] == row["se"] else float("nan")
        if not row["prompts"]:
            verdict = "not tested"
        elif row["p (Holm)"] <= alpha:
            verdict = "agrees"
        elif row["p opposite (Holm)"] <= alpha:
            verdict = "disagrees"
        else:
            verdict = "inconclusive"
        if verdict != "not tested" and row["seeds"] < min_seeds:
            verdict = f"exploratory ({verdict})"
        row["verdict"] = verdict
    rows.append({"finding": "6", "paper says": "~7B models (LoRA): multilingual on par or better in 24 of 30 cases",
                 "contrast": "needs five ~7B base models (paper profile)", "test": "-", "margin": None, "seeds": 0,
                 "prompts": 0, "effect": float("nan"), "95% low": float("nan"), "95% high": float("nan"),
                 "se": float("nan"), "p (Holm)": float("nan"), "p opposite (Holm)": float("nan"),
                 "detectable effect": float("nan"), "verdict": "not tested"})
    return pd.DataFrame(rows)


def design(profile) -> dict:
    """The claims table's settings declared in a profile (``findings.*``), as keyword arguments."""
    f = profile.findings
    return {"alpha": f.alpha, "margins": dict(f.margins), "min_seeds": f.min_seeds, "n_boot": f.n_boot, "seed": f.seed}


def verdict_counts(claims: pd.DataFrame) -> dict[str, int]:
    """Counts of agree / disagree / inconclusive / exploratory / not tested."""
    out = {"agrees": 0, "disagrees": 0, "inconclusive": 0, "exploratory": 0, "not tested": 0}
    for v in claims["verdict"]:
        out["exploratory" if v.startswith("exploratory") else v] += 1
    return out


def worked_bootstrap(a: list[float], b: list[float], n_boot: int = 5, seed: int = 0) -> pd.DataFrame:
    """A bootstrap small enough to follow by hand: paired prompts' differences, ``n_boot``
    resamples of the prompt indices, and each resample's mean difference."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_boot):
        idx = rng.integers(0, len(diff), len(diff))
        rows.append({"resample": k + 1, "prompts drawn": " ".join(str(i + 1) for i in idx),
                     "mean difference": float(diff[idx].mean())})
    return pd.DataFrame(rows)


# --- report tables of the training ------------------------------------------------------------

def loss_history_frame(exp) -> pd.DataFrame:
    """Training and validation losses of every trained run (one row per logged value)."""
    rows = []
    for run in exp.runs(include_base=False):
        path = exp.run_dir(run) / "train_result.json"
        if not path.exists():
            continue
        for h in json.loads(path.read_text())["log_history"]:
            base = {"run": run.name, "seed": run.seed, "method": run.method, "recipe": run.recipe,
                    "epoch": h.get("epoch"), "step": h.get("step")}
            if "loss" in h:
                rows.append({**base, "loss": h["loss"], "split": "train"})
            if "eval_loss" in h:
                rows.append({**base, "loss": h["eval_loss"], "split": "validation"})
    return pd.DataFrame(rows)


def runs_frame(exp) -> pd.DataFrame:
    """One row per trained run: size, budget, seed, steps, time and best validation loss."""
    rows = []
    for run in exp.runs(include_base=False):
        path = exp.run_dir(run) / "train_result.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        rows.append({"run": run.name, "method": run.method, "recipe": run.recipe, "seed": run.seed,
                     "languages": " ".join(run.languages), "examples": run.train_examples,
                     "budget units": run.budget_units, "epochs": run.epochs, "tokens": result.get("train_tokens"),
                     "steps": result.get("steps"), "seconds": result.get("seconds"),
                     "best validation loss": result.get("best_eval_loss"), "trained model": run.train_key})
    return pd.DataFrame(rows)


# --- plots ---------------------------------------------------------------------------------

def _setup():
    import seaborn as sns

    # Large enough to read when a figure is scaled to the page's width or printed.
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=1.15)
    return sns


def _per_seed(data: pd.DataFrame, value: str) -> pd.DataFrame:
    """One point per (method, recipe, language, seed): the mean over prompts. Error bars over
    these show training variance, not only prompt sampling."""
    return data.groupby(["method", "recipe", "lang", "seed"], dropna=False)[value].mean().reset_index()


def plot_scores_by_recipe(answers: pd.DataFrame, value: str = "quality", title: str = ""):
    """Per-language score by recipe, LoRA and full side by side; points are seeds."""
    sns = _setup()
    data = with_measures(answers)
    data = _per_seed(data[data["method"] != "base"], value)
    order = [r for r in RECIPE_ORDER if r in set(data["recipe"]) and r != "base"]
    g = sns.catplot(data=data, kind="bar", x="lang", y=value, hue="recipe", hue_order=order, col="method",
                    errorbar=("pi", 100), height=3.6, aspect=1.5, legend_out=True, alpha=0.8)
    g.set_axis_labels("test language", measure_names(answers)[value] if value in ("quality", "robustness") else value)
    if title:
        g.figure.suptitle(title, y=1.03)
    return g.figure


def plot_robustness(answers: pd.DataFrame):
    """Language robustness per recipe (non-English prompts): the language log-odds (when the
    references exist) and the share of answers in the wrong language; one point per seed."""
    sns = _setup()
    data = with_measures(answers)
    data = data[(data["lang"] != "en")]
    panels = [("wrong_language", "answers in the wrong language")]
    if has_likelihood(answers):
        panels.insert(0, ("robustness", "log-odds: own-language vs English reference"))
    order = [r for r in RECIPE_ORDER if r in set(data["recipe"])]
    import matplotlib.pyplot as plt

    methods = [m for m in ("base", "lora", "full") if m in set(data["method"])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.4 * len(panels)), squeeze=False)
    per_seed = data.groupby(["method", "recipe", "seed"], dropna=False)[[p for p, _ in panels]].mean().reset_index()
    for ax, (value, label) in zip(axes[:, 0], panels):
        sns.stripplot(data=per_seed, x="recipe", y=value, hue="method", hue_order=methods, order=order, dodge=True,
                      ax=ax, size=7, jitter=0.1)
        ax.set_xlabel("")
        ax.set_ylabel(label, fontsize=10)
    fig.tight_layout()
    return fig


def plot_language_confusion(answers: pd.DataFrame):
    """Prompt language vs detected answer language, per recipe (share of answers)."""
    sns = _setup()
    import matplotlib.pyplot as plt

    data = answers[answers["method"] != "base"] if (answers["method"] != "base").any() else answers
    recipes = [r for r in RECIPE_ORDER if r in set(answers["recipe"])]
    fig, axes = plt.subplots(1, len(recipes), figsize=(3.2 * len(recipes), 3.4), sharey=True, squeeze=False)
    detected_order = sorted(set(answers["detected"].fillna("none")))
    for ax, recipe in zip(axes[0], recipes):
        sub = (answers if recipe == "base" else data)
        sub = sub[sub["recipe"] == recipe]
        table = pd.crosstab(sub["lang"], sub["detected"].fillna("none"), normalize="index")
        table = table.reindex(columns=detected_order, fill_value=0)
        sns.heatmap(table, ax=ax, vmin=0, vmax=1, cmap="Blues", cbar=False, annot=table.shape[1] <= 8, fmt=".1f")
        ax.set_title(recipe, fontsize=11)
        ax.set_xlabel("answer language")
        ax.set_ylabel("prompt language" if ax is axes[0][0] else "")
    fig.tight_layout()
    return fig


def plot_losses(histories: pd.DataFrame):
    """Training and validation loss per run (one panel per method)."""
    sns = _setup()
    g = sns.relplot(data=histories, kind="line", x="epoch", y="loss", hue="run", style="split", col="method",
                    height=3.4, aspect=1.4, marker="o", markersize=4, errorbar=None)
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


def judge_robustness_gaps(answers: pd.DataFrame, seen: list[str]) -> pd.DataFrame:
    """The paper's robustness measure, when a judge ran: per (method, recipe), the judge score
    before the language gate minus after it, averaged over the seen languages
    (``polyalpaca.judge.robustness_gap``)."""
    from .judge import robustness_gap

    rows = []
    judged = answers.dropna(subset=["judge"])
    for (method, recipe), group in judged.groupby(["method", "recipe"]):
        per_lang = group.groupby("lang")[["judge", "gated_judge"]].mean()
        langs = [l for l in seen if l in per_lang.index]
        if langs:
            rows.append({"method": method, "recipe": recipe,
                         "gap": robustness_gap(per_lang["judge"].to_dict(), per_lang["gated_judge"].to_dict(), langs)})
    return pd.DataFrame(rows)
