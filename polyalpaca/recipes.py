"""The paper's four tuning recipes and their budget accounting.

One budget unit C is the cost of one monolingual fine-tune (one language's training set for
the method's epochs). With N training languages:

| recipe        | data                                        | models        | cost  |
| monolingual   | one language's set                          | one per lang  | N x C |
| multilingual  | all N languages pooled and shuffled         | one           | N x C |
| english-only  | the English set; answers every language     | one           | C     |
| downsampled   | uniform sample of the pool, one set's size  | one           | C     |

A held-out validation split is drawn once, by id, before any recipe: no id used for
validation is trained on in any language, so translations of validation items never leak.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .data import Record

RECIPES = ("monolingual", "multilingual", "english-only", "downsampled")


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


def _pool(split: dict[str, list[Record]], languages: list[str]) -> list[Record]:
    return [r for lang in languages for r in split[lang]]


def build_recipe(recipe: str, data: SplitData, languages: list[str], seed: int) -> list[TrainingSet]:
    """The training sets one recipe produces (several for monolingual, one otherwise)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    missing = [lang for lang in languages if lang not in data.train]
    if missing:
        raise ValueError(f"recipe {recipe!r} needs training data for {missing}")
    n = len(languages)
    if recipe == "monolingual":
        return [TrainingSet(recipe, f"monolingual-{lang}", [lang], list(data.train[lang]),
                            list(data.validation[lang]), 1.0, seed) for lang in languages]
    if recipe == "english-only":
        if "en" not in data.train:
            raise ValueError("the english-only recipe needs English training data")
        return [TrainingSet(recipe, "english-only", ["en"], list(data.train["en"]),
                            list(data.validation["en"]), 1.0, seed)]
    pool = _pool(data.train, languages)
    val_pool = _pool(data.validation, languages)
    rng = random.Random(f"{recipe}-{seed}")
    if recipe == "multilingual":
        rng.shuffle(pool)
        return [TrainingSet(recipe, "multilingual", list(languages), pool, val_pool, float(n), seed)]
    # downsampled: a uniform sample of the pool, as large as one language's set (the mean, when unequal)
    size = round(len(pool) / n)
    val_size = round(len(val_pool) / n)
    return [TrainingSet(recipe, "downsampled", list(languages), rng.sample(pool, size),
                        rng.sample(val_pool, val_size), 1.0, seed)]


def build_all(recipes: list[str], data: SplitData, languages: list[str], seed: int) -> list[TrainingSet]:
    return [ts for recipe in recipes for ts in build_recipe(recipe, data, languages, seed)]


def recipe_costs(sets: list[TrainingSet]) -> dict[str, float]:
    """Total budget units per recipe (monolingual adds up its per-language runs)."""
    out: dict[str, float] = {}
    for ts in sets:
        out[ts.recipe] = out.get(ts.recipe, 0.0) + ts.budget_units
    return out
