"""The paper's four tuning recipes and their budget accounting.

One budget unit C is the cost of one monolingual fine-tune (one language's training set for
the method's epochs). With N training languages:

| recipe        | data                                        | models        | cost  |
| monolingual   | one language's set                          | one per lang  | N x C |
| multilingual  | all N languages pooled and shuffled         | one           | N x C |
| english-only  | the English set; answers every language     | one           | C     |
| downsampled   | uniform sample of the pool, one set's size  | one           | C     |
| dose (ours)   | the English set, k records in another lang  | one per dose  | C     |
| dose mix      | as dose k, half of the k in a second lang   | one per dose  | C     |

The dose recipe is not the paper's: it measures how much non-English data buys robustness at a
fixed budget (``polyalpaca.dose``; ``grid.doses`` lists the k, ``grid.dose_language`` the language).
With ``grid.dose_mix_language`` it also trains, for each dose, the same k records split between two
languages: one extra language against two at the same dose (the dose chapter's second axis).

A held-out validation split is drawn once, by id, before any recipe: no id used for
validation is trained on in any language, so translations of validation items never leak.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .config import Recipe, allowed
from .data import Record

RECIPES = allowed(Recipe)  # declared on the setting grid.recipes


@dataclass
class TrainingSet:
    """The data of one grid run."""

    recipe: str
    name: str  # e.g. "monolingual-ru", "multilingual"
    languages: list[str]
    train: list[Record]
    validation: list[Record]
    budget_units: float  # cost of this run in units of C
    seed: int

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.train:
            out[r.lang] = out.get(r.lang, 0) + 1
        return dict(sorted(out.items()))


@dataclass
class SplitData:
    """Per-language records after the validation ids are held out."""

    train: dict[str, list[Record]]
    validation: dict[str, list[Record]]
    validation_ids: list[str] = field(default_factory=list)


def split_validation(records: dict[str, list[Record]], validation_size: int, seed: int) -> SplitData:
    """Hold out ``validation_size`` ids (seeded), the same ids in every language."""
    languages = list(records)
    common = set.intersection(*(set(r.id for r in records[lang]) for lang in languages))
    ordered = sorted(common)
    rng = random.Random(seed)
    held = set(rng.sample(ordered, min(validation_size, len(ordered))))
    train = {lang: [r for r in records[lang] if r.id not in held] for lang in languages}
    val = {lang: [r for r in records[lang] if r.id in held] for lang in languages}
    return SplitData(train=train, validation=val, validation_ids=sorted(held))


def stratified_ids(records: list[Record], limit: int, seed: int) -> list[str]:
    """``limit`` record ids drawn evenly across categories (seeded): categories take turns, each
    giving its next id in a seeded random order, so every category is represented before any
    gets a second example. Records without a category form one category ("")."""
    by_category: dict[str, list[str]] = {}
    for r in records:
        by_category.setdefault(r.category, []).append(r.id)
    rng = random.Random(f"stratified-{seed}")
    queues = {c: rng.sample(ids, len(ids)) for c, ids in sorted(by_category.items())}
    chosen: list[str] = []
    while len(chosen) < limit and any(queues.values()):
        for c in sorted(queues):
            if queues[c] and len(chosen) < limit:
                chosen.append(queues[c].pop())
    return chosen


def select_records(records: dict[str, list[Record]], limit: int | None, seed: int) -> dict[str, list[Record]]:
    """The same ``limit`` ids in every language (the data are parallel), stratified by the
    categories of the first language's records; all records when ``limit`` is None."""
    if not limit:
        return records
    first = next(iter(records.values()))
    common = set.intersection(*(set(r.id for r in recs) for recs in records.values()))
    ids = set(stratified_ids([r for r in first if r.id in common], limit, seed))
    return {lang: [r for r in recs if r.id in ids] for lang, recs in records.items()}


def category_mix(sets: list[TrainingSet]) -> dict[str, dict[str, int]]:
    """Examples per category in each training set."""
    out: dict[str, dict[str, int]] = {}
    for ts in sets:
        row = out.setdefault(ts.name, {})
        for r in ts.train:
            row[r.category or "-"] = row.get(r.category or "-", 0) + 1
    return out


def _pool(split: dict[str, list[Record]], languages: list[str]) -> list[Record]:
    return [r for lang in languages for r in split[lang]]


@dataclass(frozen=True)
class RecipeCell:
    """One training set a recipe makes, described by sizes alone (what ``plan`` needs when the
    data cannot be read): its name, languages, examples as a multiple of one language's set,
    budget units, and the name of the set it trains exactly the same model as (if any)."""

    name: str
    languages: tuple[str, ...]
    sets_of_one_language: float
    budget_units: float
    same_model_as: str = ""


def dose_language(languages: list[str], chosen: str = "") -> str:
    """The language a dose replaces English records with: ``chosen``, else the first non-English
    training language."""
    return chosen or next((lang for lang in languages if lang != "en"), "")


def dose_name(language: str, k: int, mix_language: str = "") -> str:
    """The run of dose ``k`` in ``language``, or split between ``language`` and ``mix_language``
    (the second axis)."""
    return f"dose-{language}+{mix_language}-{k}" if mix_language else f"dose-{language}-{k}"


def recipe_cells(recipe: str, languages: list[str], recipes: list[str] | None = None, doses: tuple[int, ...] = (),
                 dose_lang: str = "", mix_lang: str = "") -> list[RecipeCell]:
    """The training sets of ``recipe`` over ``languages``: the one statement of the recipe rules
    (``build_recipe`` fills them with records; ``planning`` sizes them). ``doses``, ``dose_lang``
    and ``mix_lang`` are the dose recipe's (``grid.doses``, ``grid.dose_language``,
    ``grid.dose_mix_language``)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    n = len(languages)
    if recipe == "dose":
        lang = dose_language(languages, dose_lang)
        cells = [RecipeCell(dose_name(lang, k), ("en", lang), 1.0, 1.0) for k in doses]
        return cells + [RecipeCell(dose_name(lang, k, mix_lang), ("en", lang, mix_lang), 1.0, 1.0)
                        for k in (doses if mix_lang else ())]
    if recipe == "monolingual":
        return [RecipeCell(f"monolingual-{lang}", (lang,), 1.0, 1.0) for lang in languages]
    if recipe == "english-only":
        if "en" not in languages:
            raise ValueError("the english-only recipe needs English training data ('en' in data.train_languages)")
        # The English-only model *is* the English monolingual model when both are in the grid.
        shared = "monolingual-en" if "monolingual" in (recipes or []) else ""
        return [RecipeCell("english-only", ("en",), 1.0, 1.0, shared)]
    if recipe == "multilingual":
        return [RecipeCell("multilingual", tuple(languages), float(n), float(n))]
    return [RecipeCell("downsampled", tuple(languages), 1.0, 1.0)]


def build_recipe(recipe: str, data: SplitData, languages: list[str], seed: int, doses: tuple[int, ...] = (),
                 dose_lang: str = "", mix_lang: str = "") -> list[TrainingSet]:
    """The training sets one recipe produces (several for monolingual and dose, one otherwise)."""
    if recipe == "dose":
        lang = dose_language(languages, dose_lang)
        sets = [build_dose(data, lang, k, seed) for k in doses]
        return sets + [build_dose(data, lang, k, seed, mix_lang) for k in (doses if mix_lang else ())]
    cells = recipe_cells(recipe, languages)
    missing = [lang for lang in languages if lang not in data.train]
    if missing:
        raise ValueError(f"recipe {recipe!r} needs training data for {missing}")
    out = []
    for cell in cells:
        pool = _pool(data.train, list(cell.languages))
        val_pool = _pool(data.validation, list(cell.languages))
        # The seed decides the multilingual order and the downsampled draw.
        rng = random.Random(f"{recipe}-{seed}")
        if recipe == "multilingual":
            rng.shuffle(pool)
        elif recipe == "downsampled":
            # a uniform sample of the pool, as large as one language's set (the mean, when unequal)
            n = len(cell.languages)
            pool, val_pool = rng.sample(pool, round(len(pool) / n)), rng.sample(val_pool, round(len(val_pool) / n))
        out.append(TrainingSet(recipe, cell.name, list(cell.languages), pool, val_pool, cell.budget_units, seed))
    return out


def dose_records(english: list[Record], other: list[Record], k: int, seed: int,
                 second: list[Record] | None = None) -> list[Record]:
    """English records in their order with ``k`` of them replaced by the same record (same id) in
    ``other``'s language: the first ``k`` ids of a seeded order, so the doses of one seed are nested
    (every record replaced at a smaller dose is replaced at a larger one). With ``second`` (another
    language's records), the same ``k`` ids are replaced, the last ``k // 2`` of them by ``second``'s
    record: dose ``k`` split between two languages, everything else as in the one-language dose."""
    languages = [other] + ([second] if second is not None else [])
    by_id = [{r.id: r for r in records} for records in languages]
    for table in by_id:
        missing = [r.id for r in english if r.id not in table]
        if missing:
            raise ValueError(f"a dose needs every English record in the other language; missing ids {missing[:5]}")
    if not 0 <= k <= len(english):
        raise ValueError(f"dose {k} is outside 0..{len(english)} (the English set's size)")
    order = random.Random(f"dose-{seed}").sample(sorted({r.id for r in english}), len(english))
    split = k - k // 2 if second is not None else k
    source = {i: by_id[0] for i in order[:split]} | {i: by_id[-1] for i in order[split:k]}
    return [source[r.id][r.id] if r.id in source else r for r in english]


def build_dose(data: SplitData, language: str, k: int, seed: int, mix_language: str = "") -> TrainingSet:
    """The dose-``k`` training set: English-only's records with ``k`` of them in ``language``, and
    its held-out records with the same share in ``language`` (dose 0 is the English-only set and
    the full dose the same records as the monolingual set of ``language``). With ``mix_language``,
    the same records with half of the ``k`` in ``mix_language`` instead."""
    n = len(data.train["en"])
    k_val = round(k * len(data.validation["en"]) / n) if n else 0
    mixed = (data.train[mix_language], data.validation[mix_language]) if mix_language else (None, None)
    train = dose_records(data.train["en"], data.train[language], k, seed, mixed[0])
    val = dose_records(data.validation["en"], data.validation[language], k_val, seed, mixed[1])
    languages = ["en", language, mix_language] if mix_language else ["en", language]
    return TrainingSet("dose", dose_name(language, k, mix_language), languages, train, val, 1.0, seed)


def build_all(recipes: list[str], data: SplitData, languages: list[str], seed: int, doses: tuple[int, ...] = (),
              dose_lang: str = "", mix_lang: str = "") -> list[TrainingSet]:
    return [ts for recipe in recipes for ts in build_recipe(recipe, data, languages, seed, doses, dose_lang, mix_lang)]


def recipe_costs(sets: list[TrainingSet]) -> dict[str, float]:
    """Total budget units per recipe (monolingual adds up its per-language runs)."""
    out: dict[str, float] = {}
    for ts in sets:
        out[ts.recipe] = out.get(ts.recipe, 0.0) + ts.budget_units
    return out
