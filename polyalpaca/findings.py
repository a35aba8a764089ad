"""From scored answers to the paper's questions: score tables, the claims table with its
statistics, the simulation that checks them, and the figures.

**Measures** (oriented so that higher is better in every contrast):

- ``quality``: the judge's gated rating when a judge ran; offline, the **gain over the base
  model** in the likelihood of the human reference answer (``polyalpaca.likelihood``): per prompt
  and language, ``100 x (NLL_base - NLL_model) / NLL_base``, the percentage by which tuning
  lowered the negative log-likelihood per byte. A relative gain has no byte scale, so Russian
  (two bytes a letter) and English weigh the same when languages are pooled; it is 0 for the
  base model by construction. Without a base model's scores: minus the NLL per byte.
- ``robustness``: the language log-odds, log P(reference in the prompt's language) - log
  P(English reference), on non-English prompts (0 by construction on English ones, so those are
  left out).
- ``answer_language``: the share of generated answers *not* in the wrong language (1 - the
  wrong-language rate), on non-English prompts: robustness as the generated answers show it.

**Design** (``polyalpaca.inference``). The units that are independent are the training seeds (a
seed draws the training records and the initialisation; recipes trained with the same seed share
their records, so contrasts pair them by seed) and the test prompts (one prompt is the same
question in every language: one unit across its translations). Each row of the table is a
contrast A - B within one tuning method, tested with a crossed random-effects t test.

Two families, declared before any run, each with Holm's correction at ``findings.alpha``:

- **tuning**: every recipe against the untuned base model, on each measure and on the languages
  of the claims. A tuned model that does not beat the base on quality carries no quality verdict.
- **claims**: the paper's findings, each row tested in the paper's direction and in the opposite
  one. Claims the paper states as "on par or better" are non-inferiority tests with margins
  declared in the profile (``findings.margins``); the others are superiority tests. A quality row
  is "not assessable" when neither of its recipes improves on the base model (tuning family). A
  verdict from fewer than ``findings.min_seeds`` seeds is exploratory and kept out of the counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .inference import Effect, crossed_effect, holm, one_sided_p_values
from .langid import detect_language, detect_language_fasttext

# judge (openai), scipy, seaborn and matplotlib are imported by the measures and figures that use
# them.

RECIPE_ORDER = ["base", "monolingual", "multilingual", "english-only", "downsampled"]
METHOD_ORDER = ["base", "lora", "full"]
REASONS = ["ok", "wrong_language", "echo", "loop", "empty", "no_letters"]
MEASURES = ("quality", "robustness", "answer_language")
BASE = "base"


# --- measures --------------------------------------------------------------------------------

def has_judge(answers: pd.DataFrame) -> bool:
    return "gated_judge" in answers and answers["gated_judge"].notna().any()


def has_likelihood(answers: pd.DataFrame) -> bool:
    return "nll_per_byte" in answers and answers["nll_per_byte"].notna().any()


def _relative_gain(answers: pd.DataFrame) -> pd.Series | None:
    """Per answer row: 100 x (base NLL - NLL) / base NLL of the same prompt, language and base
    model; None when the base model was not scored."""
    base = answers[answers["method"] == BASE]
    if base.empty or base["nll_per_byte"].isna().all():
        return None
    keys = ["prompt_id", "lang"] + (["model"] if "model" in answers else [])
    ref = base.groupby(keys)["nll_per_byte"].mean().rename("_base_nll")
    joined = answers[keys].join(ref, on=keys)["_base_nll"]
    return 100.0 * (joined - answers["nll_per_byte"].astype(float)) / joined


def paper_runs(answers: pd.DataFrame) -> pd.DataFrame:
    """The answers of the paper's recipes and the base model (without this book's own additions,
    like the dose-response runs of ``polyalpaca.dose``)."""
    return answers[answers["recipe"].isin(RECIPE_ORDER)] if len(answers) else answers


def with_measures(answers: pd.DataFrame) -> pd.DataFrame:
    """``answers`` plus the columns ``quality``, ``robustness``, ``answer_language`` and
    ``wrong_language``."""
    out = answers.copy()
    out["wrong_language"] = (out["gate_reason"] == "wrong_language").astype(float)
    out.loc[out["gate_reason"].isna(), "wrong_language"] = np.nan  # no answer generated (likelihood only)
    out["answer_language"] = 1.0 - out["wrong_language"]
    gain = _relative_gain(out) if has_likelihood(out) and not has_judge(out) else None
    if has_judge(out):
        out["quality"] = out["gated_judge"].astype(float)
    elif gain is not None:
        out["quality"] = gain
    elif has_likelihood(out):
        out["quality"] = -out["nll_per_byte"].astype(float)
    else:
        out["quality"] = out["gated_chrf"].astype(float)
    if has_likelihood(out) and "lang_logodds" in out and out["lang_logodds"].notna().any():
        out["robustness"] = out["lang_logodds"].astype(float)
    else:
        out["robustness"] = out["answer_language"]
    english = out["lang"] == "en"
    out.loc[english, "robustness"] = np.nan  # 0 by construction: not a finding
    out.loc[english, "answer_language"] = np.nan
    return out


def measure_names(answers: pd.DataFrame) -> dict[str, str]:
    """What each measure is in this run, in words."""
    if has_judge(answers):
        quality = "judge rating x language gate"
    elif has_likelihood(answers) and (answers["method"] == BASE).any():
        quality = "gain over the base model: % lower NLL per byte of the reference answer"
    elif has_likelihood(answers):
        quality = "minus NLL per byte of the reference answer"
    else:
        quality = "chrF x language gate"
    robustness = ("log-odds of the reference in the prompt's language vs the English reference"
                  if has_likelihood(answers) else "share of answers not in the wrong language")
    return {"quality": quality, "robustness": robustness,
            "answer_language": "share of generated answers not in the wrong language"}


def summary_table(answers: pd.DataFrame) -> pd.DataFrame:
    """Per (method, recipe, language), averaged over seeds and prompts: quality, robustness, the
    gate and why answers failed it, chrF (secondary) and verifiable accuracy."""
    data = with_measures(answers)
    keys = ["method", "recipe", "lang"]
    g = data.groupby(keys, sort=False)
    out = g.agg(seeds=("seed", "nunique"), answers=("prompt_id", "size"))
    if has_likelihood(data):
        out["NLL/byte"] = g["nll_per_byte"].mean()
        out["quality"] = g["quality"].mean()
        out["log-odds"] = g["lang_logodds"].mean()
    answered = data[data["gate_reason"].notna()]  # rows with a generated answer (eval.english_answers)
    ga = answered.groupby(keys, sort=False)
    out["answered"] = ga.size().reindex(out.index).fillna(0).astype(int)
    out["gate"] = ga["gate"].agg(lambda s: s.astype(float).mean())
    for reason in REASONS[1:5]:
        out[reason.replace("_", " ")] = ga["gate_reason"].agg(lambda s, r=reason: (s == r).mean())
    out["English answers"] = ga["detected"].agg(lambda s: (s == "en").mean())
    out["chrF"] = ga["chrf"].mean()
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
    data = data[data["method"] != BASE]
    per_seed = data.groupby(["method", "recipe", "seed"])[list(MEASURES)].mean()
    grouped = per_seed.groupby(level=["method", "recipe"])
    out = grouped.mean().add_suffix(" mean").join(grouped.std(ddof=1).add_suffix(" sd across seeds"))
    out["seeds"] = grouped.size()
    return out.reset_index()


# --- the cells of the design ------------------------------------------------------------------

UNSEEDED = -1  # the seed of the untuned base model's single row (it has no training seed)


class Cells:
    """Every (method, recipe)'s measures as (seeds x prompts x languages) arrays, built once, so
    that each contrast is a few array operations (the simulation runs thousands of tables).

    Contrasts are weighted combinations of recipes (``combination``), paired by seed and prompt:
    A - B is the weights (+1, -1) (``contrast``); the dose-response study's target contrast
    ``dose - EO - s (ML - EO)`` is (+1, s - 1, -s) (``polyalpaca.dose``)."""

    def __init__(self, data: pd.DataFrame, measures=MEASURES):
        data = data.assign(seed=data["seed"].fillna(UNSEEDED).astype(int))
        self.measures = list(measures)
        self.prompts = sorted(data["prompt_id"].unique())
        self.langs = sorted(data["lang"].unique())
        p_code = pd.Categorical(data["prompt_id"], categories=self.prompts).codes
        l_code = pd.Categorical(data["lang"], categories=self.langs).codes
        values = data[self.measures].to_numpy(float)
        self.arrays: dict[tuple[str, str], tuple[list[int], np.ndarray]] = {}
        for (method, recipe), idx in data.groupby(["method", "recipe"], sort=False).indices.items():
            seeds = sorted(set(data["seed"].to_numpy()[idx]))
            s_code = np.searchsorted(seeds, data["seed"].to_numpy()[idx])
            total = np.zeros((len(seeds), len(self.prompts), len(self.langs), len(self.measures)))
            count = np.zeros_like(total)
            where = (s_code, p_code[idx], l_code[idx])
            ok = ~np.isnan(values[idx])
            np.add.at(total, where, np.where(ok, values[idx], 0.0))
            np.add.at(count, where, ok)
            with np.errstate(invalid="ignore"):
                self.arrays[(BASE if method == BASE else method, recipe)] = (seeds, total / count)

    @staticmethod
    def _key(method: str, recipe: str) -> tuple[str, str]:
        return (BASE, BASE) if recipe == BASE else (method, recipe)

    def has(self, method: str, recipe: str) -> bool:
        """Whether ``method`` has models of ``recipe`` (the base model: whether it was scored)."""
        return self._key(method, recipe) in self.arrays

    def matrix(self, method: str, recipe: str, langs: list[str], measure: str):
        """(seeds, seeds x prompts matrix averaged over ``langs``; NaN where a language is missing)."""
        key = self._key(method, recipe)
        if key not in self.arrays:
            return [], np.empty((0, len(self.prompts)))
        seeds, arr = self.arrays[key]
        li = [self.langs.index(l) for l in langs if l in self.langs]
        if len(li) < len(langs):
            return seeds, np.full((len(seeds), len(self.prompts)), np.nan)
        return seeds, arr[:, :, li, self.measures.index(measure)].mean(axis=2)

    def combination(self, method: str, terms: list[tuple[float, str]], langs: list[str], measure: str) -> np.ndarray:
        """The (seeds x prompts) matrix of ``sum(weight x recipe)`` over ``terms`` (weight, recipe),
        paired by seed and prompt: one row per seed that every tuned recipe of the terms was trained
        with (models of one seed share their training records), the base model's single row used
        for every seed; one column per prompt with a value in every term, language and seed.
        Empty (0 x 0) when a recipe has no models or the recipes share no seed."""
        parts = [(weight, *self.matrix(method, recipe, langs, measure)) for weight, recipe in terms]
        if any(not seeds for _, seeds, _ in parts):
            return np.empty((0, 0))
        seeded = [set(seeds) for _, seeds, _ in parts if seeds != [UNSEEDED]]
        common = sorted(set.intersection(*seeded)) if seeded else []
        if not common:
            return np.empty((0, 0))
        d = sum(weight * (np.broadcast_to(m[:1], (len(common), m.shape[1])) if seeds == [UNSEEDED]
                          else m[[seeds.index(s) for s in common]]) for weight, seeds, m in parts)
        return d[:, ~np.isnan(d).any(axis=0)]

    def effect(self, method: str, terms: list[tuple[float, str]], langs: list[str], measure: str) -> Effect:
        """The seeds x prompts t test (``polyalpaca.inference``) of ``combination``."""
        return crossed_effect(self.combination(method, terms, langs, measure))

    def contrast(self, method: str, recipe_a: str, recipe_b: str, langs: list[str], measure: str) -> Effect:
        """A - B over ``langs``: the combination with weights (+1, -1), paired by seed (B's single
        row when B is the base model) and by prompt, over the prompts both answered in every
        language and seed."""
        return self.effect(method, [(1.0, recipe_a), (-1.0, recipe_b)], langs, measure)


def contrast(data: pd.DataFrame, method: str, recipe_a: str, recipe_b: str, langs: list[str],
             measure: str) -> Effect:
    """A - B of ``measure`` (a column of ``with_measures``) within ``method`` over ``langs``."""
    return Cells(data).contrast(method, recipe_a, recipe_b, langs, measure)


# --- the claims ------------------------------------------------------------------------------

@dataclass
class Claim:
    finding: str
    paper: str
    method: str
    a: str
    b: str
    langs: list[str]
    measure: str  # one of MEASURES
    test: str  # superiority | non-inferiority
    family: str = "claims"  # claims | tuning

    def describe(self) -> str:
        return f"{self.a} - {self.b}, {self.method}, {self.measure.replace('_', ' ')}, {'/'.join(self.langs)}"


def paper_claims(seen: list[str], unseen: list[str], methods: list[str]) -> list[Claim]:
    """The paper's findings, one row per distinct contrast, each in the direction the paper
    reports (A - B > 0, or > -margin for "on par or better"). Robustness claims get one row per
    robustness measure (the log-odds and the generated answers' language)."""
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
        for measure in ("robustness", "answer_language"):
            claims.append(Claim("3, 4", "Downsampled multilingual (1 unit) is far more language-robust than "
                                "English-only (1 unit), the least robust recipe", m, "downsampled", "english-only",
                                non_en + unseen, measure, "superiority"))
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


def tuning_rows(claims: list[Claim], recipes: dict[str, list[str]], seen: list[str], unseen: list[str],
                answered: dict[tuple[str, str], set[str]] | None = None) -> list[Claim]:
    """Every recipe against the base model: quality on the seen languages and on the languages of
    each quality claim that names the recipe, robustness (log-odds) on the non-English test
    languages, each on the languages the recipe's models answer (``answered[(method, recipe)]``;
    monolingual models answer only their own). ``recipes`` maps each method to its recipes. (The answers' language against the
    base is shown, not tested: every extra row makes the family's threshold stricter.)"""
    non_en = [l for l in seen if l != "en"] + list(unseen)
    rows: dict[tuple, Claim] = {}

    def add(method, recipe, langs, measure):
        if answered is not None:
            langs = [l for l in langs if l in answered.get((method, recipe), set())]
        k = (method, recipe, tuple(langs), measure)
        if langs and k not in rows:
            rows[k] = Claim("tuning", f"{recipe} tuning improves on the untuned base model", method, recipe, BASE,
                            list(langs), measure, "superiority", "tuning")

    for method, names in recipes.items():
        for recipe in names:
            add(method, recipe, seen, "quality")
            for c in claims:
                if c.measure == "quality" and c.method == method and recipe in (c.a, c.b):
                    add(method, recipe, c.langs, "quality")
            add(method, recipe, non_en, "robustness")
    return list(rows.values())


def _verdict(row: dict, alpha: float, tuning: bool) -> str:
    if not row["prompts"]:
        return "not tested"
    if row["p (Holm)"] <= alpha:
        return "improves" if tuning else "agrees"
    if row["p opposite (Holm)"] <= alpha:
        return "worsens" if tuning else "disagrees"
    return "no detectable change" if tuning else "inconclusive"


def claims_table(answers: pd.DataFrame, seen: list[str], unseen: list[str], alpha: float = 0.05,
                 margins: dict[str, float] | None = None, min_seeds: int = 3) -> pd.DataFrame:
    """The tuning rows and the paper's claims: effect A - B, its standard error and degrees of
    freedom, the interval adjusted for the family (Bonferroni, each side at alpha / tests), Holm
    p-values in both directions, the smallest effect the run could detect, and the verdict.
    ``answers`` is the answers frame (or one already passed through ``with_measures``)."""
    margins = margins or {}
    data = answers if "quality" in answers else with_measures(answers)
    methods = [m for m in ("lora", "full") if m in set(data["method"])]
    recipes = {m: [r for r in RECIPE_ORDER if ((data["method"] == m) & (data["recipe"] == r)).any()] for m in methods}
    claims = paper_claims(seen, unseen, methods)
    has_base = (data["method"] == BASE).any()
    answered = {k: set(g) for k, g in data.groupby(["method", "recipe"])["lang"]}
    rows_spec = (tuning_rows(claims, recipes, seen, unseen, answered) if has_base else []) + claims
    cells = Cells(data)
    effects = [cells.contrast(c.method, c.a, c.b, c.langs, c.measure) for c in rows_spec]
    thresholds = np.array([-margins.get(c.measure, 0.0) if c.test == "non-inferiority" else 0.0 for c in rows_spec])
    p_claim, p_opposite = one_sided_p_values(effects, thresholds)
    rows = []
    for c, e, theta, pc, po in zip(rows_spec, effects, thresholds, p_claim, p_opposite):
        rows.append({"family": c.family, "finding": c.finding, "paper says": c.paper, "contrast": c.describe(),
                     "method": c.method, "a": c.a, "b": c.b, "measure": c.measure, "languages": "/".join(c.langs),
                     "test": c.test, "margin": -theta if c.test == "non-inferiority" else None,
                     "seeds": e.seeds, "prompts": e.prompts, "effect": e.mean, "se": e.se, "se seeds": e.se_seed,
                     "se prompts": e.se_prompt, "p": pc, "p opposite": po})
    for family in ("tuning", "claims"):
        members = [i for i, r in enumerate(rows) if r["family"] == family]
        adjusted = holm([rows[i]["p"] for i in members] + [rows[i]["p opposite"] for i in members])
        tests = int(np.isfinite(adjusted).sum())
        for k, i in enumerate(members):
            e, row = effects[i], rows[i]
            row["p (Holm)"], row["p opposite (Holm)"] = adjusted[k], adjusted[len(members) + k]
            row["tests in family"] = tests
            row["low (adjusted)"], row["high (adjusted)"] = e.interval(alpha / max(tests, 1))
            row["detectable effect"] = e.detectable(alpha / max(tests, 1))
    improves = {(r["method"], r["a"], r["languages"]) for r in rows
                if r["family"] == "tuning" and r["measure"] == "quality" and r["p (Holm)"] <= alpha}
    verdicts = []
    for row in rows:
        tuning = row["family"] == "tuning"
        verdict = _verdict(row, alpha, tuning)
        if (not tuning and has_base and row["measure"] == "quality" and verdict != "not tested"
                and not {(row["method"], row["a"], row["languages"]), (row["method"], row["b"], row["languages"])}
                & improves):
            verdict = f"not assessable ({verdict})"
        if verdict != "not tested" and row["seeds"] < min_seeds:
            verdict = f"exploratory ({verdict})"
        verdicts.append(verdict)
    out = pd.DataFrame(rows)
    out["verdict"] = verdicts
    out = out.drop(columns=["p", "p opposite"])
    untestable = {"family": "claims", "finding": "6",
                  "paper says": "~7B models (LoRA): multilingual on par or better in 24 of 30 cases",
                  "contrast": "needs five ~7B base models (paper profile)", "test": "-", "seeds": 0, "prompts": 0,
                  "verdict": "not tested"}
    return pd.concat([out, pd.DataFrame([untestable])], ignore_index=True)


def design(profile) -> dict:
    """The claims table's settings declared in a profile (``findings.*``), as keyword arguments."""
    f = profile.findings
    return {"alpha": f.alpha, "margins": dict(f.margins), "min_seeds": f.min_seeds}


VERDICTS = ("agrees", "disagrees", "inconclusive", "not assessable", "exploratory", "not tested")


def verdict_counts(claims: pd.DataFrame) -> dict[str, int]:
    """Counts of the claims family's verdicts: agrees / disagrees / inconclusive / not assessable /
    exploratory / not tested (a verdict in parentheses is counted by its outer word)."""
    out = dict.fromkeys(VERDICTS, 0)
    for v in claims.loc[claims["family"] == "claims", "verdict"]:
        out[next(k for k in VERDICTS if v.startswith(k))] += 1
    return out


def tuning_summary(claims: pd.DataFrame) -> pd.DataFrame:
    """The tuning family as one line per (method, recipe, measure, languages): the gain over the
    base model with its adjusted interval and verdict."""
    t = claims[claims["family"] == "tuning"]
    return t[["method", "a", "measure", "languages", "effect", "low (adjusted)", "high (adjusted)", "seeds", "prompts",
              "verdict"]].rename(columns={"a": "recipe", "effect": "gain over base"})


def power_by_seeds(claims: pd.DataFrame, alpha: float, seeds: tuple[int, ...] = (3, 5, 8),
                   family: str = "tuning") -> pd.DataFrame:
    """What another seed buys: for each tested row of ``family``, with each number of ``seeds``, the
    threshold an effect must clear at the family's strictest level (alpha / tests: the first step
    of Holm's procedure) and the detectable effect (80% power at that level, as in the table), from
    this build's standard errors (``Effect.with_seeds``)."""
    rows = claims[(claims["family"] == family) & (claims["prompts"] > 1)]
    out = []
    for _, r in rows.iterrows():
        e = Effect(r["effect"], r["se seeds"], r["se prompts"], int(r["seeds"]), int(r["prompts"]))
        level = alpha / max(int(r["tests in family"]), 1)
        line = {"method": r["method"], "contrast": r["contrast"], "measure": r["measure"], "languages": r["languages"],
                "effect": r["effect"]}
        for n in seeds:
            line[f"threshold, {n} seeds"] = e.with_seeds(n).margin_of_error(level)
        for n in seeds:
            line[f"detectable, {n} seeds"] = e.with_seeds(n).detectable(level)
        out.append(line)
    return pd.DataFrame(out)


def power_summary(power: pd.DataFrame) -> dict[int, int]:
    """How many rows of ``power_by_seeds`` have an observed effect that clears the family's strictest
    threshold, per number of seeds (with the build's own seeds: the rows significant at Holm's
    first step, a lower bound on its verdicts)."""
    counts = {}
    for column in power.columns:
        if column.startswith("threshold, "):
            counts[int(column.split()[1])] = int((power["effect"].abs() >= power[column]).sum())
    return counts


# --- does the procedure keep its promises? ----------------------------------------------------

def variance_components(answers: pd.DataFrame) -> pd.DataFrame:
    """Per measure, the spreads of the build's tuned models (mean over (method, recipe) cells of
    the two-way analysis of variance on seeds x prompts): prompt, seed and residual standard
    deviations. The inputs of ``simulate_error_rates``."""
    data = with_measures(answers)
    tuned = data[data["method"] != BASE]
    langs = sorted(tuned["lang"].unique())
    cells, rows = Cells(tuned), []
    for measure in MEASURES:
        parts = []
        for (method, recipe) in cells.arrays:
            present = [l for l in langs if (tuned[(tuned["method"] == method) & (tuned["recipe"] == recipe)]["lang"] == l).any()]
            use = [l for l in present if not (measure != "quality" and l == "en")]
            if not use:
                continue
            _, m = cells.matrix(method, recipe, use, measure)
            m = m[:, ~np.isnan(m).any(axis=0)]
            s, p = m.shape
            if s < 2 or p < 2:
                continue
            grand, row, col = m.mean(), m.mean(axis=1), m.mean(axis=0)
            ms_s, ms_p = p * ((row - grand) ** 2).sum() / (s - 1), s * ((col - grand) ** 2).sum() / (p - 1)
            ms_e = ((m - row[:, None] - col[None, :] + grand) ** 2).sum() / ((s - 1) * (p - 1))
            parts.append((max(ms_p - ms_e, 0) / s, max(ms_s - ms_e, 0) / p, ms_e))
        if parts:
            v = np.mean(parts, axis=0)
            rows.append({"measure": measure, "prompt sd": float(np.sqrt(v[0])), "seed sd": float(np.sqrt(v[1])),
                         "residual sd": float(np.sqrt(v[2]))})
    return pd.DataFrame(rows)


def simulated_answers(components: dict[str, tuple[float, float, float]], seen: list[str], unseen: list[str],
                      seeds: list[int], prompts: int, rng: np.random.Generator, shifts: dict | None = None,
                      tuning_gain: float = 10.0, methods: tuple[str, ...] = ("lora", "full"),
                      runs: list[tuple[str, str, list[str]]] | None = None) -> pd.DataFrame:
    """A measures frame (as ``with_measures`` returns) with the grid's shape and no recipe effect:
    every tuned model gains ``tuning_gain`` quality over the base and the runs are equal, except
    for ``shifts[(method, run name, measure)]``. ``components[measure]`` = (prompt sd, seed sd,
    residual sd); the prompt effect of each (method, run) is drawn apart (it does not cancel in a
    contrast), the seed effect of each model apart (no shared sample component). ``runs``: each
    method's runs as (name, recipe, languages answered); by default the paper's recipes, named by
    their recipe, with one monolingual run answering every seen language (it stands for the
    monolingual models, each answering its own)."""
    shifts = shifts or {}
    langs = list(seen) + list(unseen)
    non_en = [l for l in langs if l != "en"]
    if runs is None:
        runs = [(r, r, list(seen) if r == "monolingual" else langs) for r in RECIPE_ORDER[1:]]
    columns: dict[str, list] = {k: [] for k in ("method", "recipe", "name", "seed", "lang", "prompt_id", *MEASURES)}
    cells = [(BASE, BASE, BASE, [np.nan], langs)]
    cells += [(m, name, recipe, list(seeds), list(run_langs)) for m in methods for name, recipe, run_langs in runs]
    pid = np.array([f"p{i}" for i in range(prompts)])
    for method, name, recipe, cell_seeds, cell_langs in cells:
        n = len(cell_seeds) * len(cell_langs)
        for column, value in (("method", method), ("recipe", recipe), ("name", name)):
            columns[column].append(np.full(n * prompts, value, dtype=object))
        columns["seed"].append(np.repeat(np.asarray(cell_seeds, float), len(cell_langs) * prompts))
        columns["lang"].append(np.tile(np.repeat(np.asarray(cell_langs, dtype=object), prompts), len(cell_seeds)))
        columns["prompt_id"].append(np.tile(pid, n))
        english = np.tile(np.repeat(np.asarray([l not in non_en for l in cell_langs]), prompts), len(cell_seeds))
        for measure in MEASURES:
            psd, ssd, esd = components[measure]
            level = shifts.get((method, name, measure), 0.0) + (tuning_gain if measure == "quality" else 0.0)
            seed_effect = np.zeros(len(cell_seeds)) if recipe == BASE else rng.normal(0, ssd, len(cell_seeds))
            v = (level + seed_effect[:, None, None] + rng.normal(0, psd, prompts)[None, None, :]
                 + rng.normal(0, esd, (len(cell_seeds), len(cell_langs), prompts))).ravel()
            if measure == "quality" and recipe == BASE:
                v = np.zeros_like(v)
            if measure != "quality":
                v[english] = np.nan
            columns[measure].append(v)
    return pd.DataFrame({k: np.concatenate(v) for k, v in columns.items()})


def _at_margin_shifts(claims: list[Claim], margins: dict[str, float]) -> dict:
    """Shifts that put every non-inferiority row exactly at its margin (A worse than B by it)."""
    shifts = {}
    for c in claims:
        if c.test == "non-inferiority":
            shifts[(c.method, c.a, c.measure)] = shifts.get((c.method, c.b, c.measure), 0.0) - margins.get(c.measure, 0.0)
    return shifts


def simulate_error_rates(components: dict[str, tuple[float, float, float]], seen: list[str], unseen: list[str],
                         seeds: list[int], prompts: int, alpha: float = 0.05, margins: dict[str, float] | None = None,
                         tables: int = 400, rng_seed: int = 0, methods: tuple[str, ...] = ("lora", "full")) -> dict:
    """Run ``claims_table`` on ``tables`` simulated builds and count false verdicts of the claims
    family: with no recipe effect (any superiority verdict, or a non-inferiority "disagrees"), and
    with every non-inferiority row's true effect at its margin (a non-inferiority "agrees"). Both
    rates should be at most ``alpha``."""
    margins = dict(margins or {})
    rng = np.random.default_rng(rng_seed)
    claims = paper_claims(seen, unseen, list(methods))
    shifts = _at_margin_shifts(claims, margins)
    null_false = margin_false = 0
    for _ in range(tables):
        null = simulated_answers(components, seen, unseen, seeds, prompts, rng, methods=methods)
        table = claims_table(null, seen, unseen, alpha, margins, min_seeds=1)
        rows = table[(table["family"] == "claims") & (table["prompts"] > 0)]
        sup = rows["test"] == "superiority"
        v = rows["verdict"].str.replace(r"^not assessable \((.*)\)$", r"\1", regex=True)
        null_false += bool((sup & v.isin(["agrees", "disagrees"])).any() or (~sup & (v == "disagrees")).any())
        at_margin = simulated_answers(components, seen, unseen, seeds, prompts, rng, shifts, methods=methods)
        table = claims_table(at_margin, seen, unseen, alpha, margins, min_seeds=1)
        rows = table[(table["family"] == "claims") & (table["test"] == "non-inferiority") & (table["prompts"] > 0)]
        v = rows["verdict"].str.replace(r"^not assessable \((.*)\)$", r"\1", regex=True)
        margin_false += bool((v == "agrees").any())
    return {"tables": tables, "false verdict rate, no effect": null_false / tables,
            "non-inferiority agrees rate, effect at the margin": margin_false / tables, "alpha": alpha}


def worked_interval(a: list[float], b: list[float]) -> pd.DataFrame:
    """The t interval of one seed's paired differences, small enough to follow by hand: the
    prompts' differences, their mean, standard deviation, standard error and 95% interval."""
    from scipy import stats

    diff = np.asarray(a, float) - np.asarray(b, float)
    n = len(diff)
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    se = sd / np.sqrt(n)
    t = float(stats.t.ppf(0.975, n - 1)) if n > 1 else float("nan")
    return pd.DataFrame([{"prompts": n, "mean difference": float(diff.mean()), "sd": sd, "se = sd / sqrt(n)": se,
                          "t (0.975, n - 1)": t, "95% low": diff.mean() - t * se, "95% high": diff.mean() + t * se}])


# --- report tables of the training ------------------------------------------------------------

def loss_history_frame(exp) -> pd.DataFrame:
    """Training and validation losses of every trained run (one row per logged value; the
    untuned model's validation loss at epoch 0)."""
    rows = []
    for run in exp.runs(include_base=False):
        result = exp.train_result(run)
        if result is None:
            continue
        if result.get("eval_loss_before") is not None:
            rows.append({"run": run.name, "seed": run.seed, "method": run.method, "recipe": run.recipe, "epoch": 0.0,
                         "step": 0, "loss": result["eval_loss_before"], "split": "validation"})
        for h in result["log_history"]:
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
        result = exp.train_result(run) or {}
        rows.append({"run": run.name, "method": run.method, "recipe": run.recipe, "seed": run.seed,
                     "languages": " ".join(run.languages), "examples": run.train_examples,
                     "budget units": run.budget_units, "epochs": run.epochs, "tokens": result.get("train_tokens"),
                     "steps": result.get("steps"), "seconds": result.get("seconds"),
                     "validation loss before": result.get("eval_loss_before"),
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


def _palette(names: list[str], order: list[str]) -> dict[str, tuple]:
    """One colour per name, fixed by its place in ``order`` (so a recipe or method has the same
    colour in every figure of the book, whichever subset a figure shows)."""
    import seaborn as sns

    colours = sns.color_palette("colorblind", len(order))
    return {n: colours[order.index(n)] for n in names}


def recipe_colours(names: list[str]) -> dict[str, tuple]:
    return _palette(names, RECIPE_ORDER)


def method_colours(names: list[str]) -> dict[str, tuple]:
    return _palette(names, METHOD_ORDER)


def plot_scores_by_recipe(answers: pd.DataFrame, value: str = "quality", title: str = ""):
    """Per-language score by recipe, LoRA and full side by side; bars are means over seeds, the
    black lines span the seeds' means (points are seeds' means over prompts)."""
    sns = _setup()
    data = with_measures(answers)
    data = _per_seed(data[data["method"] != BASE], value)
    order = [r for r in RECIPE_ORDER if r in set(data["recipe"]) and r != BASE]
    g = sns.catplot(data=data, kind="bar", x="lang", y=value, hue="recipe", hue_order=order, col="method",
                    col_order=[m for m in METHOD_ORDER if m in set(data["method"])], palette=recipe_colours(order),
                    errorbar=("pi", 100), height=3.6, aspect=1.5, legend_out=True, alpha=0.8)
    g.set_axis_labels("test language", measure_names(answers)[value] if value in MEASURES else value)
    for ax in g.axes.flat:
        ax.axhline(0, color="black", linewidth=0.8)
    if title:
        g.figure.suptitle(title, y=1.03)
    return g.figure


def plot_robustness(answers: pd.DataFrame):
    """Language robustness per recipe, one panel per non-English test language (so every recipe is
    compared on the same prompts) and per measure: the language log-odds (when references exist)
    and the share of answers in the wrong language; one point per seed, the base model as a line."""
    sns = _setup()
    import matplotlib.pyplot as plt

    data = with_measures(answers)
    data = data[data["lang"] != "en"]
    panels = [("wrong_language", "answers in the wrong language (share)")]
    if has_likelihood(answers):
        panels.insert(0, ("robustness", "log-odds, own language vs English"))
    langs = [l for l in sorted(set(data["lang"]))]
    methods = [m for m in METHOD_ORDER[1:] if m in set(data["method"])]
    order = [r for r in RECIPE_ORDER[1:] if r in set(data["recipe"])]
    per_seed = data.groupby(["method", "recipe", "lang", "seed"], dropna=False)[[p for p, _ in panels]].mean().reset_index()
    fig, axes = plt.subplots(len(panels), len(langs), figsize=(4.8 * len(langs), 3.3 * len(panels)), squeeze=False)
    for i, (value, label) in enumerate(panels):
        for j, lang in enumerate(langs):
            ax, sub = axes[i, j], per_seed[per_seed["lang"] == lang]
            tuned = sub[sub["method"] != BASE]
            sns.stripplot(data=tuned, x="recipe", y=value, hue="method", hue_order=methods, order=order, dodge=True,
                          palette=method_colours(methods), ax=ax, size=7, jitter=0.1, legend=(i == 0 and j == 0))
            base = sub[sub["method"] == BASE][value]
            if len(base):
                ax.axhline(float(base.mean()), color="grey", linestyle="--", linewidth=1, label="base model")
            ax.set_xlabel("")
            ax.set_ylabel(label if j == 0 else "", fontsize=10)
            unseen = "seen" in data and not data.loc[data["lang"] == lang, "seen"].astype(bool).any()
            ax.set_title(f"{lang} prompts" + (" (unseen in tuning)" if unseen else ""), fontsize=11)
            ax.tick_params(axis="x", labelrotation=20)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if axes[0, 0].get_legend():
        axes[0, 0].get_legend().remove()
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


def plot_forest(claims: pd.DataFrame, family: str = "claims", names: dict[str, str] | None = None):
    """The rows of one family as a forest plot, one panel per measure (their units differ): the
    effect A - B, its family-adjusted interval, zero, and each non-inferiority row's margin (a grey
    tick); green where the row agrees (or tuning improves), red where it disagrees (or worsens).
    None when no row could be tested."""
    sns = _setup()
    import matplotlib.pyplot as plt

    rows = claims[(claims["family"] == family) & (claims["prompts"] > 0)].copy()
    measures = [m for m in MEASURES if m in set(rows["measure"])]
    if not measures:
        return None  # nothing could be tested (no artefacts yet)
    names = names or {}
    sizes = [max(int((rows["measure"] == m).sum()), 1) for m in measures]
    fig, axes = plt.subplots(len(measures), 1, figsize=(9, 0.38 * sum(sizes) + 1.4 * len(measures)),
                             gridspec_kw={"height_ratios": sizes}, squeeze=False)
    colours = {"agrees": sns.color_palette("colorblind")[2], "improves": sns.color_palette("colorblind")[2],
               "disagrees": sns.color_palette("colorblind")[3], "worsens": sns.color_palette("colorblind")[3]}
    for ax, measure in zip(axes[:, 0], measures):
        sub = rows[rows["measure"] == measure].iloc[::-1]
        y = np.arange(len(sub))
        for k, (_, r) in enumerate(sub.iterrows()):
            outer = str(r["verdict"]).split(" (")[0].replace("exploratory", "").strip()
            colour = colours.get(outer, "black")
            ax.plot([r["low (adjusted)"], r["high (adjusted)"]], [k, k], color=colour, linewidth=2)
            ax.plot([r["effect"]], [k], "o", color=colour)
            if r["test"] == "non-inferiority" and r["margin"] == r["margin"]:
                ax.plot([-r["margin"]], [k], "|", color="grey", markersize=14, markeredgewidth=2)
        ax.axvline(0, color="black", linewidth=0.8)
        labels = sub["contrast"].str.replace(f", {measure.replace('_', ' ')}", "", regex=False)
        ax.set_yticks(y, [f"{l}  [{v}]" for l, v in zip(labels, sub["verdict"])], fontsize=8)
        label = {"quality": "quality: " + names.get("quality", "the chapter's quality score"),
                 "robustness": "robustness: " + names.get("robustness", "language log-odds (nats)"),
                 "answer_language": "answer language: share not in the wrong language"}[measure]
        ax.set_xlabel(f"{label}; A - B with its family-adjusted interval", fontsize=9)
    fig.tight_layout()
    return fig


def plot_language_confusion(answers: pd.DataFrame):
    """Prompt language vs detected answer language, per recipe (share of the generated answers)."""
    sns = _setup()
    import matplotlib.pyplot as plt

    answers = answers[answers["gate_reason"].notna()]  # rows with a generated answer (eval.english_answers)
    data = answers[answers["method"] != "base"] if (answers["method"] != "base").any() else answers
    recipes = [r for r in RECIPE_ORDER if r in set(answers["recipe"])]
    fig, axes = plt.subplots(1, len(recipes), figsize=(3.2 * len(recipes), 3.4), sharey=True, squeeze=False)
    detected_order = sorted(set(answers["detected"].fillna("none")))
    prompt_order = list(dict.fromkeys(answers["lang"]))  # every panel the same rows (shared y axis)
    for ax, recipe in zip(axes[0], recipes):
        sub = (answers if recipe == "base" else data)
        sub = sub[sub["recipe"] == recipe]
        table = pd.crosstab(sub["lang"], sub["detected"].fillna("none"), normalize="index")
        # A language the recipe was not asked in (monolingual models) stays a blank row.
        table = table.reindex(columns=detected_order, fill_value=0).reindex(index=prompt_order)
        sns.heatmap(table, ax=ax, vmin=0, vmax=1, cmap="Blues", cbar=False, annot=table.shape[1] <= 8, fmt=".1f",
                    xticklabels=True, yticklabels=True)  # every language labelled
        ax.set_title(recipe, fontsize=11)
        ax.set_xlabel("answer language")
        ax.set_ylabel("prompt language" if ax is axes[0][0] else "")
    fig.tight_layout()
    return fig


def run_colours(runs: pd.DataFrame) -> dict[str, tuple]:
    """One colour per run (``runs``: columns ``run`` and ``recipe``), in its recipe's colour
    (``recipe_colours``); a recipe with several runs (monolingual: one per language) gets lighter
    shades of it, one per run, so a run is told apart and still reads as its recipe."""
    pairs = runs.drop_duplicates("run")
    known = [r for r in RECIPE_ORDER if r in set(pairs["recipe"])]
    colours = recipe_colours(known)
    out = {}
    for recipe in known:
        names = sorted(pairs.loc[pairs["recipe"] == recipe, "run"])
        for k, name in enumerate(names):
            t = 0.55 * k / max(len(names), 1)  # towards white
            out[name] = tuple(c + (1 - c) * t for c in colours[recipe])
    return out


def plot_losses(histories: pd.DataFrame):
    """Training and validation loss per run (one panel per method; with several seeds the mean over
    seeds), each run in its recipe's colour (``run_colours``), training and validation by line style."""
    sns = _setup()
    data = histories.groupby(["method", "run", "recipe", "split", "epoch"], as_index=False)["loss"].mean()
    palette = run_colours(data[["run", "recipe"]])
    g = sns.relplot(data=data, kind="line", x="epoch", y="loss", hue="run", hue_order=list(palette), palette=palette,
                    style="split", col="method", col_order=[m for m in METHOD_ORDER if m in set(data["method"])],
                    height=3.4, aspect=1.4, marker="o", markersize=4, errorbar=None)
    g.set_axis_labels("epoch", "loss (nats per target token)")
    return g.figure


def detector_agreement(answers: pd.DataFrame) -> pd.DataFrame:
    """Per test language: how often langdetect (the gate's detector) and fastText (lid.176) agree
    on the answers, and how often fastText alone would have passed them."""
    rows = []
    for lang, group in answers[answers["detected"].notna()].groupby("lang"):
        second = group["response"].map(detect_language_fasttext)
        rows.append({"lang": lang, "answers": len(group), "agreement": float((second == group["detected"]).mean()),
                     "langdetect says target": float((group["detected"] == lang).mean()),
                     "fastText says target": float((second == lang).mean())})
    return pd.DataFrame(rows)


def gate_language_changes(answers: pd.DataFrame, candidates: tuple[str, ...] | None, seed: int = 0) -> pd.DataFrame:
    """Per test language: how many answers the gate counts as wrong-language when langdetect may
    choose any of its 55 languages, and when it decides among ``candidates`` (the study's languages
    and English, ``eval.gate_languages = study``), and which languages the unrestricted detector
    named instead. The stored answers' gate used ``candidates``."""
    rows = []
    texts = answers[answers["detected"].notna()]
    for lang, group in texts.groupby("lang"):
        free = group["response"].map(lambda t: detect_language(t, seed))
        study = group["response"].map(lambda t: detect_language(t, seed, candidates))
        moved = free[(free != study)]
        rows.append({"lang": lang, "answers": len(group),
                     "not the prompt's language, any of 55": int((free != lang).sum()),
                     "not the prompt's language, study's languages": int((study != lang).sum()),
                     "outcomes changed": int(((free == lang) != (study == lang)).sum()),
                     "languages named only by the unrestricted detector": ", ".join(
                         f"{k} {v}" for k, v in moved.value_counts().items())})
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
