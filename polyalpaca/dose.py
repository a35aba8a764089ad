"""How much multilinguality is enough? The dose-response of non-English data at a fixed budget.

Beyond the paper. A *dose* run trains on the English-only recipe's records of its seed with ``k``
of them replaced by the same records in another training language (``recipes.build_dose``), at
the budget of one language's set. Dose 0 is the English-only model and the full dose (every
record) uses the same records as the monolingual model of that language, so the curve reuses both
and needs runs only for the doses in between (``grid.doses``). Every dose of one seed trains on
the same records, and the records replaced at a smaller dose are replaced at every larger one: the
only thing that changes along the curve is the language of ``k`` records.

Each point of a curve is the contrast dose k - English-only on one measure and language, paired
by seed and prompt (``findings.Cells.combination``, tested by ``polyalpaca.inference``'s seeds x
prompts t test), with an interval adjusted for the curve's doses (Bonferroni, each side at
alpha / doses). The **smallest sufficient dose** is the smallest dose that reaches a share ``s``
of the multilingual recipe's gain over English-only: its contrast ``dose - EO - s (ML - EO)``
(weights +1, s - 1, -s) uses the same seeds and prompts, so the uncertainty of the target is in
its interval too. Its interval runs from the smallest dose that the data cannot rule out (upper
bound >= 0) to the smallest dose shown to reach it (lower bound > 0). A saturating curve
``A (1 - exp(-k / tau))``, fitted to the points, draws the line between them and gives the dose
where it crosses the target.

**The promise**, per curve (one measure on one language: the family the adjustment is for):
where no dose differs from English-only, some dose is shown to improve on it in at most alpha of
builds (each side of the band holds for the whole curve at once; both sides together, at most
2 alpha); where every dose is exactly at the target, some dose is shown to reach it in at most
alpha of builds. The curves are separate families: across all of a chapter's curves the chance of
some false verdict is larger. ``simulate_dose_error_rates`` measures these rates on simulated builds
with a build's own spreads (``findings.simulated_answers``), as ``findings.simulate_error_rates``
does for the claims table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .findings import BASE, MEASURES, Cells, method_colours, simulated_answers, variance_components, with_measures
from .design import model_short_name
from .recipes import dose_language, dose_name

ENGLISH_ONLY = "english-only"
MULTILINGUAL = "multilingual"


def dose_of(name: str, recipe: str, language: str, full_dose: int) -> float:
    """The dose of a run (records in ``language`` out of ``full_dose``), NaN for runs off the curve."""
    if recipe == ENGLISH_ONLY:
        return 0.0
    if name == f"monolingual-{language}":
        return float(full_dose)
    prefix = f"dose-{language}-"
    if recipe == "dose" and name.startswith(prefix):
        return float(name[len(prefix):])
    return float("nan")


def curve_frame(answers: pd.DataFrame, language: str, full_dose: int) -> pd.DataFrame:
    """The measures of the runs on the curve, with a ``dose`` column, plus the multilingual
    reference and the base model; the ``recipe`` column names each point (``dose 6``)."""
    data = answers if "quality" in answers else with_measures(answers)
    dose = np.array([dose_of(n, r, language, full_dose) for n, r in zip(data["name"], data["recipe"])])
    keep = ~np.isnan(dose) | data["recipe"].isin([MULTILINGUAL, BASE]).to_numpy()
    out = data[keep].assign(dose=dose[keep])
    on_curve = out["dose"].notna()
    out.loc[on_curve, "recipe"] = [f"dose {int(k)}" for k in out.loc[on_curve, "dose"]]
    return out


def dose_table(answers: pd.DataFrame, method: str, language: str, unseen: list[str], full_dose: int,
               share: float = 0.5, alpha: float = 0.05) -> pd.DataFrame:
    """One row per (measure, languages, dose): the effect dose - English-only with its interval
    adjusted over the curve's doses, and the contrast with the target (``share`` of multilingual's
    gain over English-only) with its interval. Measures: robustness (log-odds) and the answers'
    language on ``language`` and on each unseen language; quality (gain over the base) on English,
    ``language`` and the unseen languages (does English lose anything?)."""
    data = curve_frame(answers, language, full_dose)
    data = data[(data["method"] == method) | (data["method"] == BASE)]
    if data.empty:
        return pd.DataFrame()
    cells = Cells(data)
    doses = sorted({int(k) for k in data["dose"].dropna()})
    level = alpha / max(len(doses) - 1, 1)
    panels = [(m, [l]) for m in ("robustness", "answer_language") for l in [language, *unseen]]
    panels += [("quality", [l]) for l in ["en", language, *unseen]]
    rows = []
    for measure, langs in panels:
        if not cells.has(method, "dose 0"):
            continue
        ml_gain = (cells.effect(method, [(1.0, MULTILINGUAL), (-1.0, "dose 0")], langs, measure)
                   if cells.has(method, MULTILINGUAL) else None)
        for k in doses:
            if not cells.has(method, f"dose {k}"):
                continue
            gain = cells.effect(method, [(1.0, f"dose {k}"), (-1.0, "dose 0")], langs, measure)
            row = {"measure": measure, "languages": "/".join(langs), "dose": k, "share of set": k / full_dose,
                   "effect": gain.mean, "seeds": gain.seeds, "prompts": gain.prompts}
            row["low"], row["high"] = gain.interval(level) if k else (0.0, 0.0)
            if ml_gain is not None:
                reach = cells.effect(method, [(1.0, f"dose {k}"), (share - 1.0, "dose 0"), (-share, MULTILINGUAL)],
                                     langs, measure)
                row["multilingual gain"] = ml_gain.mean
                row["share of multilingual gain"] = gain.mean / ml_gain.mean if ml_gain.mean else float("nan")
                row["target"] = share * ml_gain.mean
                row["reach"] = reach.mean
                row["reach low"], row["reach high"] = reach.interval(level)
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out = out[(out["dose"] == 0) | (out["prompts"] > 1)]  # a dose without scores here (eval.dose_answers)
    measured = out[out["dose"] > 0].groupby(["measure", "languages"]).size()
    keep = [(m, l) in measured.index for m, l in zip(out["measure"], out["languages"])]
    return out[keep].reset_index(drop=True)


def fit_saturating(doses: np.ndarray, effects: np.ndarray) -> tuple[float, float]:
    """Least-squares ``A (1 - exp(-k / tau))`` through the points (tau on a log grid from a tenth of
    the smallest positive dose to ten times the largest, A in closed form for each tau). Two
    parameters need two positive doses: with one (a curve of the unseen language, whose full dose
    has no model), every tau fits it exactly, and the fit is NaN rather than an arbitrary tau."""
    k, y = np.asarray(doses, float), np.asarray(effects, float)
    positive = k[k > 0]
    if len(np.unique(positive)) < 2:
        return float("nan"), float("nan")
    best = (np.inf, np.nan, np.nan)
    for tau in np.geomspace(positive.min() / 10, positive.max() * 10, 400):
        x = 1 - np.exp(-k / tau)
        a = float(x @ y / (x @ x))
        sse = float(((y - a * x) ** 2).sum())
        if sse < best[0]:
            best = (sse, a, tau)
    return best[1], best[2]


def sufficient_dose(table: pd.DataFrame, measure: str, languages: str) -> dict:
    """The smallest dose reaching the target on one curve: the point estimate (smallest dose whose
    estimate reaches it), the interval (smallest dose not ruled out, smallest dose shown), and the
    fitted curve's crossing."""
    t = table[(table["measure"] == measure) & (table["languages"] == languages)].sort_values("dose")
    if t.empty or "reach" not in t:
        return {}

    def first(mask):
        hits = t.loc[mask, "dose"]
        return int(hits.iloc[0]) if len(hits) else None

    t = t[t["prompts"] > 1]
    a, tau = fit_saturating(t["dose"].to_numpy(), t["effect"].to_numpy())
    target = float(t["target"].iloc[0]) if len(t) else float("nan")
    out = {"measure": measure, "languages": languages, "target": target, "estimate": None, "not ruled out from": None,
           "shown at": None, "fitted crossing": float("nan"), "fit A": a, "fit tau": tau,
           "full dose": int(t["dose"].max()) if len(t) else 0, "note": ""}
    if not target > 0:
        out["note"] = "multilingual does not gain over English-only here: no target to reach"
        return out
    crossing = -tau * np.log(1 - target / a) if a == a and a > target else float("nan")
    out.update({"estimate": first(t["reach"] >= 0), "not ruled out from": first(t["reach high"] >= 0),
                "shown at": first(t["reach low"] > 0), "fitted crossing": float(crossing)})
    if out["shown at"] is None:
        out["note"] = "no dose is shown to reach the target"
    return out


def sufficient_doses(table: pd.DataFrame) -> pd.DataFrame:
    """``sufficient_dose`` for every robustness curve of the table."""
    if table.empty:
        return pd.DataFrame()
    keys = table[table["measure"].isin(["robustness", "answer_language"])][["measure", "languages"]].drop_duplicates()
    return pd.DataFrame([d for m, l in keys.itertuples(index=False) if (d := sufficient_dose(table, m, l))])


# --- does the procedure keep its promise? ----------------------------------------------------

def simulated_dose_answers(components: dict[str, tuple[float, float, float]], language: str, unseen: list[str],
                           doses: list[int], full_dose: int, seeds: list[int], prompts: int, rng: np.random.Generator,
                           gains: dict[str, float], dose_shares: dict[int, float] | None = None,
                           method: str = "lora", dose_answers: bool = True) -> pd.DataFrame:
    """A measures frame of one simulated dose build (``findings.simulated_answers`` with the curve's
    runs): English-only, the doses, the monolingual model of ``language`` as the full dose (answering
    its own language only, as in the grid), multilingual and the base model. Multilingual's true
    gain over English-only is ``gains[measure]``; dose k's is ``dose_shares[k] x gains[measure]``
    (0 for a dose not named: no dose effect). ``dose_answers`` false: the dose runs generated no
    answers (``eval.dose_answers``), so they have no answer-language value."""
    langs = ["en", language, *unseen]
    on_curve = {dose_name(language, k): k for k in doses if 0 < k < full_dose}
    on_curve[f"monolingual-{language}"] = full_dose
    runs = [(ENGLISH_ONLY, ENGLISH_ONLY, langs), (MULTILINGUAL, MULTILINGUAL, langs),
            (f"monolingual-{language}", "monolingual", [language])]
    runs += [(name, "dose", langs) for name, k in on_curve.items() if k < full_dose]
    shares = dose_shares or {}
    shifts = {}
    for measure, gain in gains.items():
        shifts[(method, MULTILINGUAL, measure)] = gain
        shifts.update({(method, name, measure): shares.get(k, 0.0) * gain for name, k in on_curve.items()})
    answers = simulated_answers(components, ["en", language], unseen, seeds, prompts, rng, shifts, methods=(method,),
                                runs=runs)
    if not dose_answers:
        answers.loc[answers["recipe"] == "dose", "answer_language"] = np.nan
    return answers


def simulate_dose_error_rates(components: dict[str, tuple[float, float, float]], language: str, unseen: list[str],
                              doses: list[int], full_dose: int, seeds: list[int], prompts: int, share: float = 0.5,
                              alpha: float = 0.05, gains: dict[str, float] | None = None, tables: int = 200,
                              rng_seed: int = 0, method: str = "lora", dose_answers: bool = True) -> pd.DataFrame:
    """Run ``dose_table`` on ``tables`` simulated dose builds of each of two kinds and count, per
    curve (one measure on one language, the family its Bonferroni adjustment is for), how often
    the procedure says something false:

    - **no dose effect** (every dose equal to English-only, multilingual above it): the share of
      builds in which some dose is shown to improve on English-only (its adjusted interval above
      0; the promise: at most ``alpha``), and shown to differ in either direction (the band's two
      sides together: at most 2 ``alpha``);
    - **every dose exactly at the target** (``share`` of multilingual's gain): the share of builds
      in which some dose is shown to reach the target (its ``reach low`` above 0, which is what
      makes it the smallest sufficient dose; at most ``alpha``). Every dose at the target is the
      least favourable case: the rate for one dose at the target, the others below, is smaller.
      The same builds give the power: how often some dose is shown to improve on English-only when
      every dose truly gains ``share`` of multilingual's gain.

    ``components[measure]`` = (prompt sd, seed sd, residual sd), as ``findings.variance_components``
    gives them for a build, and the build's design (``doses``, ``seeds``, ``prompts``,
    ``dose_answers``); ``gains[measure]``: multilingual's true gain over English-only (by
    default the measure's total spread). The false-verdict rates do not depend on the gains (the
    contrasts' errors do not); the power does. A last row counts the builds in which any curve
    gives a false verdict: the curves are separate families, so this is not a promise."""
    rng = np.random.default_rng(rng_seed)
    gains = gains if gains is not None else {m: float(np.linalg.norm(components[m])) for m in MEASURES}
    at_target = {k: share for k in [*doses, full_dose] if k > 0}
    names = {"improves": "false improves, no dose effect", "differs": "false differs, no dose effect",
             "reaches": "false reaches, every dose at target", "power": "power, every dose at target"}
    found: list[pd.DataFrame] = []
    for _ in range(tables):
        flags = []
        for shares in (None, at_target):
            answers = simulated_dose_answers(components, language, unseen, doses, full_dose, seeds, prompts, rng, gains,
                                             shares, method, dose_answers)
            t = dose_table(answers, method, language, unseen, full_dose, share, alpha)
            t = t[t["dose"] > 0]
            said = ({"improves": t["low"] > 0, "differs": (t["low"] > 0) | (t["high"] < 0)} if shares is None
                    else {"reaches": t["reach low"] > 0, "power": t["low"] > 0})
            flags.append(t[["measure", "languages"]].assign(**said).groupby(["measure", "languages"], sort=False).any())
        per_curve = pd.concat(flags, axis=1).eq(True)  # a curve missing from one kind: False
        per_curve.loc[("any curve", "all"), :] = per_curve.any()  # the curves are separate families: no promise
        found.append(per_curve)
    rates = pd.concat(found).astype(int).groupby(level=[0, 1], sort=False).sum() / tables
    return (rates[list(names)].rename(columns=names).reset_index()
            .assign(tables=tables, seeds=len(seeds), prompts=prompts, alpha=alpha))


# --- the second axis: one extra language against two, at the same dose -------------------------

MIX_MEASURES = ("robustness", "answer_language")


def mix_frame(answers: pd.DataFrame, method: str, language: str, mix_language: str, doses: list[int]) -> pd.DataFrame:
    """``method``'s runs of the second axis, the ``recipe`` column naming each: English-only
    (``dose 0``), dose k all in ``language`` (``one language k``) and the same k records split
    between ``language`` and ``mix_language`` (``two languages k``)."""
    data = answers if "quality" in answers else with_measures(answers)
    names = {dose_name(language, k): f"one language {k}" for k in doses}
    names |= {dose_name(language, k, mix_language): f"two languages {k}" for k in doses}
    data = data[data["method"] == method]
    keep = data["name"].isin(list(names)) | (data["recipe"] == ENGLISH_ONLY)
    out = data[keep].copy()
    out["recipe"] = [names.get(n, "dose 0") for n in out["name"]]
    return out


def mix_table(answers: pd.DataFrame, method: str, language: str, mix_language: str, unseen: list[str],
              doses: list[int], alpha: float = 0.05) -> pd.DataFrame:
    """The second axis: at each dose k, two languages (the k records split between ``language``
    and ``mix_language``) minus one (all k in ``language``), paired by seed and prompt, per measure
    (robustness log-odds, answer language), language (each unseen language: the question asked;
    ``language``: what the seen language gives up) and dose, with both runs' gain over English-only
    beside it. The rows are one family: each interval is adjusted for them all (Bonferroni, each
    side at alpha / (2 x rows)), so that with no difference anywhere some row is shown to differ in
    at most alpha of builds (``simulate_mix_error_rates`` checks it). The verdict says which is
    higher where the interval excludes 0, and ``detectable`` what the row could have seen."""
    if not mix_language or answers.empty:
        return pd.DataFrame()
    cells = Cells(mix_frame(answers, method, language, mix_language, doses))
    found = []
    for measure in MIX_MEASURES:
        for lang in [*unseen, language]:
            for k in doses:
                one, two = f"one language {k}", f"two languages {k}"
                if not (cells.has(method, one) and cells.has(method, two)):
                    continue
                diff = cells.effect(method, [(1.0, two), (-1.0, one)], [lang], measure)
                if diff.prompts > 1:
                    gains = [cells.effect(method, [(1.0, run), (-1.0, "dose 0")], [lang], measure).mean
                             if cells.has(method, "dose 0") else float("nan") for run in (one, two)]
                    found.append((measure, lang, k, diff, gains))
    level = alpha / (2 * max(len(found), 1))
    rows = []
    for measure, lang, k, diff, (one_gain, two_gain) in found:
        low, high = diff.interval(level)
        verdict = ("two languages higher" if low > 0 else "one language higher" if high < 0 else "no difference shown")
        rows.append({"measure": measure, "languages": lang, "seen": lang == language, "dose": k,
                     "one language - English-only": one_gain, "two languages - English-only": two_gain,
                     "two - one": diff.mean, "low": low, "high": high, "detectable": diff.detectable(level),
                     "seeds": diff.seeds, "prompts": diff.prompts, "verdict": verdict, "rows in family": len(found)})
    return pd.DataFrame(rows)


def mix_headline(table: pd.DataFrame, mix_language: str) -> str:
    """The unseen languages' rows of ``mix_table`` in a sentence (effect, adjusted interval, verdict)."""
    rows = table[~table["seen"]] if len(table) else table
    if not len(rows):
        return "no row of the second axis could be measured"
    parts = [f"{r['measure'].replace('_', ' ')} on {r['languages']} at dose {r['dose']}: two languages minus one "
             f"{r['two - one']:+.2f} [{r['low']:.2f}, {r['high']:.2f}], {r['verdict']}" for _, r in rows.iterrows()]
    return f"with {mix_language} as the second language, " + "; ".join(parts)


def simulated_mix_answers(components: dict[str, tuple[float, float, float]], language: str, mix_language: str,
                          unseen: list[str], doses: list[int], seeds: list[int], prompts: int, rng: np.random.Generator,
                          differences: dict[str, float] | None = None, method: str = "lora") -> pd.DataFrame:
    """A measures frame of one simulated second axis (``findings.simulated_answers``): English-only,
    and per dose the one-language and two-language runs, answering every test language; two
    languages minus one is ``differences[measure]`` (0 when not named: no difference)."""
    runs = [(ENGLISH_ONLY, ENGLISH_ONLY, ["en", language, *unseen])]
    for k in doses:
        runs += [(dose_name(language, k), "dose", ["en", language, *unseen]),
                 (dose_name(language, k, mix_language), "dose", ["en", language, *unseen])]
    shifts = {(method, dose_name(language, k, mix_language), m): d for k in doses for m, d in (differences or {}).items()}
    return simulated_answers(components, ["en", language], unseen, seeds, prompts, rng, shifts, methods=(method,),
                             runs=runs)


def simulate_mix_error_rates(components: dict[str, tuple[float, float, float]], language: str, mix_language: str,
                             unseen: list[str], doses: list[int], seeds: list[int], prompts: int, alpha: float = 0.05,
                             differences: dict[str, float] | None = None, tables: int = 200, rng_seed: int = 0,
                             method: str = "lora") -> dict:
    """Run ``mix_table`` on ``tables`` simulated builds with no difference between one and two
    languages and count those in which some row says one is higher (the promise: at most
    ``alpha``); on as many with two languages higher by ``differences[measure]`` on every row
    (by default each measure's total spread), count those in which some row says so (the power)."""
    rng = np.random.default_rng(rng_seed)
    differences = differences if differences is not None else {m: float(np.linalg.norm(components[m])) for m in MEASURES}
    false = power = 0
    for _ in range(tables):
        for shift in (None, differences):
            answers = simulated_mix_answers(components, language, mix_language, unseen, doses, seeds, prompts, rng,
                                            shift, method)
            verdicts = mix_table(answers, method, language, mix_language, unseen, doses, alpha)["verdict"]
            if shift is None:
                false += bool((verdicts != "no difference shown").any())
            else:
                power += bool((verdicts == "two languages higher").any())
    return {"tables": tables, "seeds": len(seeds), "prompts": prompts, "alpha": alpha,
            "false verdict rate, no difference": false / tables, "power, two languages higher": power / tables}


def plot_dose_response(table: pd.DataFrame, names: dict[str, str] | None = None):
    """One panel per (measure, language): the effect of each dose over English-only with its
    adjusted interval, the fitted saturating curve, and the multilingual recipe's gain and the
    target share of it as horizontal lines. The x axis is the records replaced (square-root scale,
    so that dose 0 stays on it)."""
    import matplotlib.pyplot as plt

    panels = table[["measure", "languages"]].drop_duplicates().itertuples(index=False)
    panels = list(panels)
    cols = min(3, len(panels)) or 1
    rows = -(-len(panels) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colour = method_colours(["lora", "full"])["lora"]
    for ax, (measure, langs) in zip(axes.ravel(), panels):
        t = table[(table["measure"] == measure) & (table["languages"] == langs)].sort_values("dose")
        k = t["dose"].to_numpy(float)
        ax.fill_between(k, t["low"], t["high"], color=colour, alpha=0.2, lw=0, label="adjusted interval")
        ax.errorbar(k, t["effect"], yerr=[t["effect"] - t["low"], t["high"] - t["effect"]], fmt="o", color=colour,
                    capsize=3, label="dose - English-only")
        a, tau = fit_saturating(k, t["effect"].to_numpy())
        if a == a:
            grid = np.linspace(0, k.max(), 200)
            ax.plot(grid, a * (1 - np.exp(-grid / tau)), color=colour, lw=1, label="fitted A(1 - exp(-k/tau))")
        if "multilingual gain" in t and t["multilingual gain"].notna().any():
            ax.axhline(t["multilingual gain"].iloc[0], color="0.3", ls=":", lw=1, label="multilingual - English-only")
            if measure != "quality":
                ax.axhline(t["target"].iloc[0], color="0.3", ls="--", lw=1, label="target share")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_xscale("function", functions=(lambda x: np.sqrt(np.clip(x, 0, None)), np.square))
        ax.set_xticks(k)
        ax.set_xlabel("records in the other language (of the set)")
        label = (names or {}).get(measure, measure.replace("_", " "))
        ax.set_title(f"{measure.replace('_', ' ')}, {langs}", fontsize=10)
        ax.set_ylabel("difference from English-only", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.text(0.02, 0.98, label[:60], transform=ax.transAxes, fontsize=6, va="top", color="0.4")
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_wrong_language(rates: pd.DataFrame):
    """The wrong-language rate of the generated answers along the curve (``DoseStudy.wrong_language``),
    one panel per language of the curves: one point per seed and dose, the mean over seeds as a
    line, the multilingual recipe and the base model as horizontal lines (their mean over seeds).
    The x axis as in ``plot_dose_response``."""
    import matplotlib.pyplot as plt

    langs = list(dict.fromkeys(rates["lang"]))
    fig, axes = plt.subplots(1, len(langs), figsize=(4.2 * len(langs), 3.2), squeeze=False)
    colour = method_colours(["lora", "full"])["lora"]
    for ax, lang in zip(axes[0], langs):
        sub = rates[rates["lang"] == lang]
        curve = sub[sub["dose"].notna()].sort_values("dose")
        ax.plot(curve["dose"], curve["wrong-language rate"], "o", color=colour, alpha=0.5, label="one seed")
        mean = curve.groupby("dose")["wrong-language rate"].mean()
        ax.plot(mean.index, mean.to_numpy(), "-", color=colour, label="mean over seeds")
        for point, style in ((MULTILINGUAL, ":"), (BASE, "--")):
            level = sub.loc[sub["point"] == point, "wrong-language rate"]
            if len(level):
                ax.axhline(float(level.mean()), color="0.3", ls=style, lw=1, label=f"{point} (mean)")
        ax.set_xscale("function", functions=(lambda x: np.sqrt(np.clip(x, 0, None)), np.square))
        ax.set_xticks(mean.index.to_numpy())
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("records in the other language (of the set)")
        ax.set_ylabel("answers in the wrong language (share)", fontsize=8)
        ax.set_title(f"{lang} prompts", fontsize=10)
        ax.tick_params(labelsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


LITERATURE = {
    "study": "Shaham et al. 2024 (reported)",
    "setting": "a large multilingual LLM, an English instruction-tuning set with multilingual examples mixed in, "
               "answers judged",
    "dose that helps": "about 40 multilingual examples",
    "languages": "the tuning languages and unseen ones; 2-4 tuning languages for cross-lingual generalisation",
}


@dataclass
class DoseStudy:
    """The dose-response study of one build: which runs, which measures, and the tables."""

    answers: pd.DataFrame
    method: str
    language: str
    doses: list[int]
    full_dose: int
    unseen: list[str]
    share: float
    alpha: float
    training_sets: list
    model: str = ""
    mix_language: str = ""  # the second axis (grid.dose_mix_language; '' = not run)

    @classmethod
    def of(cls, exp, share: float | None = None) -> DoseStudy:
        """The study as ``exp``'s profile declares it (``grid.doses``, ``grid.dose_language``,
        ``findings.dose_share``), on the first method of the grid (LoRA when it is there)."""
        p = exp.profile
        on = "dose" in p.grid.recipes and bool(p.grid.doses)
        method = ("lora" if "lora" in p.grid.methods else p.grid.methods[0]) if on else ""
        language = dose_language(p.data.train_languages, p.grid.dose_language) if on else ""
        english = [r for r in exp.runs(include_base=False) if r.method == method and r.recipe == ENGLISH_ONLY]
        answers = exp.answers_frame() if on else pd.DataFrame()
        sets = [t for t in exp.training_sets() if t.recipe in ("dose", ENGLISH_ONLY) or t.name == f"monolingual-{language}"]
        return cls(with_measures(answers) if len(answers) else answers, method, language, sorted(p.grid.doses) if on else [],
                   english[0].train_examples if english else 0, list(p.data.unseen_languages),
                   p.findings.dose_share if share is None else share, p.findings.alpha, sets if on else [],
                   model_short_name(p.grid.models[0]), p.grid.dose_mix_language if on else "")

    def design_table(self) -> pd.DataFrame:
        """Records per language of each set on the curve and of the second axis (first seed), in dose
        order."""
        rows = []
        mixed = {dose_name(self.language, k, self.mix_language): k for k in self.doses} if self.mix_language else {}
        for ts in self.training_sets:
            counts = ts.counts()
            k = mixed.get(ts.name, dose_of(ts.name, ts.recipe, self.language, self.full_dose))
            row = {"dose": int(k), "run": ts.name, "en": counts.get("en", 0), self.language: counts.get(self.language, 0)}
            if self.mix_language:
                row[self.mix_language] = counts.get(self.mix_language, 0)
            rows.append(row | {"held out": len(ts.validation)})
        return pd.DataFrame(rows).sort_values("dose", kind="stable") if rows else pd.DataFrame()

    def mix_table(self) -> pd.DataFrame:
        """The second axis (``mix_table``); empty when this build did not run it."""
        if not self.mix_language or self.answers.empty:
            return pd.DataFrame()
        return mix_table(self.answers, self.method, self.language, self.mix_language, self.unseen, self.doses, self.alpha)

    def mix_error_rates(self, tables: int = 50, rng_seed: int = 0) -> dict:
        """``simulate_mix_error_rates`` with this build's design and the spreads of the second axis's
        runs (``findings.variance_components``); empty with fewer than two seeds or no table."""
        table = self.mix_table()
        if table.empty or table["seeds"].max() < 2:
            return {}
        components = variance_components(mix_frame(self.answers, self.method, self.language, self.mix_language,
                                                   self.doses))
        spreads = {r["measure"]: (r["prompt sd"], r["seed sd"], r["residual sd"]) for _, r in components.iterrows()}
        if set(spreads) != set(MEASURES):
            return {}
        seeds = list(range(int(table["seeds"].max())))
        return simulate_mix_error_rates(spreads, self.language, self.mix_language, self.unseen, self.doses, seeds,
                                        int(table["prompts"].max()), self.alpha, tables=tables, rng_seed=rng_seed,
                                        method=self.method)

    def table(self) -> pd.DataFrame:
        if not self.doses or self.answers.empty:
            return pd.DataFrame()
        return dose_table(self.answers, self.method, self.language, self.unseen, self.full_dose, self.share, self.alpha)

    def sufficient(self) -> pd.DataFrame:
        return sufficient_doses(self.table())

    def dose_seeds(self) -> list[int]:
        """The seeds the dose runs were trained with (``grid.dose_seeds``): the curve's seeds."""
        if self.answers.empty:
            return []
        runs = self.answers[(self.answers["recipe"] == "dose") & (self.answers["method"] == self.method)]
        return sorted(int(s) for s in runs["seed"].dropna().unique())

    def wrong_language(self) -> pd.DataFrame:
        """Per language of the curves (the dose language and the unseen ones), point of the curve
        (``point``: dose k, multilingual, base) and seed: the wrong-language rate of the generated
        answers (mean over prompts). Empty when the doses between the ends generated no answers
        (``eval.dose_answers`` false)."""
        if not self.doses or self.answers.empty:
            return pd.DataFrame()
        data = curve_frame(self.answers, self.language, self.full_dose)
        data = data[((data["method"] == self.method) | (data["method"] == BASE))
                    & data["lang"].isin([self.language, *self.unseen])]
        data = data.dropna(subset=["wrong_language"])
        if not ((data["dose"] > 0) & (data["dose"] < self.full_dose)).any():
            return pd.DataFrame()
        rates = data.groupby(["lang", "recipe", "dose", "seed"], dropna=False, sort=False)["wrong_language"].mean()
        out = rates.rename("wrong-language rate").reset_index().rename(columns={"recipe": "point"})
        return out.sort_values(["lang", "dose", "point", "seed"], na_position="last").reset_index(drop=True)

    def error_rates(self, tables: int = 50, rng_seed: int = 0) -> pd.DataFrame:
        """``simulate_dose_error_rates`` with this build's design (doses, the dose runs' seeds, the
        prompts, whether the doses answered) and spreads (``findings.variance_components`` of the
        runs on the curve, each dose a cell of its own), the multilingual recipe's gain over
        English-only as measured on the dose language (its size) setting the power. Empty with fewer
        than two dose seeds (the seed part of an interval is then unknown) or a measure without
        spreads."""
        table = self.table()
        seeds = self.dose_seeds()
        if len(seeds) < 2 or table.empty:
            return pd.DataFrame()
        curve = curve_frame(self.answers, self.language, self.full_dose)
        components = variance_components(curve[(curve["method"] == self.method) | (curve["method"] == BASE)])
        spreads = {r["measure"]: (r["prompt sd"], r["seed sd"], r["residual sd"]) for _, r in components.iterrows()}
        if set(spreads) != set(MEASURES):
            return pd.DataFrame()
        gains = None
        if "multilingual gain" in table:
            seen = table[table["languages"] == self.language].groupby("measure")["multilingual gain"].first().abs()
            gains = {m: float(seen[m]) if m in seen and seen[m] == seen[m] else float(np.linalg.norm(spreads[m]))
                     for m in MEASURES}
        answered = len(self.wrong_language()) > 0
        return simulate_dose_error_rates(spreads, self.language, self.unseen, self.doses, self.full_dose, seeds,
                                         int(self.answers["prompt_id"].nunique()), self.share, self.alpha, gains, tables,
                                         rng_seed, self.method, answered)

    def headline(self, sufficient: pd.DataFrame) -> dict[str, str]:
        """Glue values for the seen language's log-odds curve (text: a dose or "none of the doses")."""
        row = sufficient[(sufficient["measure"] == "robustness") & (sufficient["languages"] == self.language)] \
            if len(sufficient) else sufficient

        def text(value):
            return "none" if value is None or value != value else str(int(value))

        if not len(row):
            return {"headline_estimate": "not measured", "headline_shown": "not measured", "headline_low": "not measured",
                    "headline": "this build measured no robustness curve on the dose language"}
        r = row.iloc[0]
        estimate, shown, low = text(r["estimate"]), text(r["shown at"]), text(r["not ruled out from"])
        if r["note"].startswith("multilingual does not gain"):
            sentence = "the multilingual recipe does not gain over English-only here, so there is no target to reach"
        elif estimate == "none":
            sentence = (f"no dose up to {r['full dose']} records reaches it (the data cannot rule it out from dose "
                        f"{low} on)" if low != "none" else f"no dose up to {r['full dose']} records reaches it")
        else:
            sentence = (f"{estimate} records reach it in estimate, " + (f"shown at {shown}" if shown != "none" else
                        "none shown beyond doubt") + (f", not ruled out from {low}" if low != "none" else ""))
        return {"headline_estimate": estimate, "headline_shown": shown, "headline_low": low, "headline": sentence}

    def literature_table(self, headline: dict[str, str]) -> pd.DataFrame:
        """Shaham et al.'s reported setting and number beside this build's."""
        estimate = headline.get("headline_estimate", "")
        if estimate.isdigit() and self.full_dose:
            helps = (f"{estimate} records ({int(estimate) / self.full_dose:.0%} of the set) reach {self.share:.0%} of "
                     "the multilingual recipe's gain in log-odds")
        else:
            helps = f"{self.share:.0%} of the multilingual recipe's gain in log-odds: {headline.get('headline', '')}"
        ours = {"study": "this build", "setting": f"{self.model} base, {self.method}, an English set of "
                f"{self.full_dose} records with k of them in {self.language}", "dose that helps": helps,
                "languages": f"{self.language} (seen); {', '.join(self.unseen) or 'no'} unseen"}
        return pd.DataFrame([LITERATURE, ours])
