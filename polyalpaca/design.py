"""The study's design: the one description of a profile's runs, computable without data or models.

A profile's grid is base models x methods x seeds x the recipes' cells (``recipes.recipe_cells``,
the one statement of the recipe rules), in that order, plus one untuned base run per model when
asked. ``cells(profile)`` lists them; every other part of the package reads the grid from here:

- the experiment (``grid.Experiment.runs``) fills each cell with its records and keys its run
  folder (a ``GridRun``), which the stages (training, evaluation, judging) take;
- planning (``planning.plan_table``) sizes the cells, with or without the data;
- SLURM (``slurm.grid_jobs``) makes one array job per trained model;
- serving and the book's design page list and count them.

So a cell's label (``lora-multilingual-s42``), the short name of its model, which cells share
one trained model (the English-only model *is* the English monolingual model) and the optimizer
steps of a run (from the effective batch, as training counts them) are stated once, here, and
so are the settings a method's runs are trained and asked with (``training_settings``,
``train_template``, ``decoding``, ``decoding_template``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from . import recipes
from .config import DecodingConfig, Profile, TrainConfig
from .prompts import PromptTemplate, load_template
from .recipes import TrainingSet

BASE = "base"  # the untuned model's method, recipe and cell name: it answers zero-shot


def model_short_name(spec: str) -> str:
    """A model spec's last path part (``pypi:gemma-3-270m`` -> ``gemma-3-270m``)."""
    return spec.split(":")[-1].rstrip("/").split("/")[-1]


def run_label(method: str, name: str, seed: int | None) -> str:
    """The name users type: METHOD-NAME-sSEED (``lora-multilingual-s42``), or ``base``."""
    return BASE if method == BASE else f"{method}-{name}-s{seed}"


def gradient_accumulation_steps(cfg: TrainConfig, processes: int = 1) -> int:
    """Steps accumulated per optimizer step: ``effective_batch / (batch_size x processes)`` when
    the profile declares an effective batch, else ``cfg.gradient_accumulation`` as given."""
    if cfg.effective_batch <= 0:
        return cfg.gradient_accumulation
    per_step = cfg.batch_size * processes
    if cfg.effective_batch % per_step:
        raise ValueError(
            f"{cfg.method}.effective_batch = {cfg.effective_batch} is not a multiple of {cfg.method}.batch_size "
            f"({cfg.batch_size}) x {processes} process{'es' if processes != 1 else ''} = {per_step}: change "
            f"{cfg.method}.batch_size or the number of processes so that the effective batch divides evenly")
    return cfg.effective_batch // per_step


def examples_per_step(cfg: TrainConfig, processes: int = 1) -> int:
    """Examples per optimizer step, as training takes them (``gradient_accumulation_steps``)."""
    return cfg.batch_size * processes * max(gradient_accumulation_steps(cfg, processes), 1)


def optimizer_steps(examples: int, cfg: TrainConfig, processes: int = 1) -> float:
    """Optimizer steps of a run on ``examples`` training examples: per epoch, one step per
    ``examples_per_step`` examples (the last one partial), times the epochs."""
    return math.ceil(examples / examples_per_step(cfg, processes)) * cfg.epochs


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a recipe's cell for one model, method and seed (or the base model)."""

    model: str
    method: str  # lora | full | base
    seed: int | None  # None for the untuned base model
    recipe: str
    name: str  # the training set's name: monolingual-ru, multilingual, ... (base: "base")
    languages: tuple[str, ...]  # training languages
    eval_languages: tuple[str, ...]  # test languages its model answers
    sets_of_one_language: float  # training examples as a multiple of one language's set
    budget_units: float
    same_model_as: str = ""  # the cell (same model, method, seed) that trains exactly this model

    @property
    def label(self) -> str:
        return run_label(self.method, self.name, self.seed)

    @property
    def short_model(self) -> str:
        return model_short_name(self.model)

    @property
    def trained_as(self) -> str:
        """The name of the cell whose trained model this run uses (its own, unless shared)."""
        return self.same_model_as or self.name

    @property
    def model_id(self) -> tuple:
        """What identifies the trained model without the data: equal for runs that share one."""
        return (self.model, self.method, self.seed, self.trained_as)


def eval_languages(profile: Profile, recipe: str, languages) -> tuple[str, ...]:
    """The test languages a cell's model answers: a monolingual model its own language (when it is
    tested), every other model every test language."""
    tests = profile.data.test_languages
    return tuple(l for l in tests if l in languages) if recipe == "monolingual" else tuple(tests)


def cells(profile: Profile, include_base: bool | None = None) -> list[Cell]:
    """Every run of ``profile``'s grid, in grid order: per model, the base run (with
    ``include_base``; default ``eval.evaluate_base_model``), then methods x seeds x recipes' cells."""
    p = profile
    include_base = p.eval.evaluate_base_model if include_base is None else include_base
    langs = list(p.data.train_languages)
    out: list[Cell] = []
    for model in p.grid.models:
        if include_base:
            out.append(Cell(model, BASE, None, BASE, BASE, (), tuple(p.data.test_languages), 0.0, 0.0))
        for method in p.grid.methods:
            for seed in p.grid.seeds:
                for recipe in p.grid.recipes:
                    for c in recipes.recipe_cells(recipe, langs, list(p.grid.recipes), p.grid.doses_at(seed),
                                                   p.grid.dose_language, p.grid.dose_mix_language):
                        out.append(Cell(model, method, seed, recipe, c.name, tuple(c.languages),
                                        eval_languages(p, recipe, c.languages), c.sets_of_one_language,
                                        c.budget_units, c.same_model_as))
    return out


def trained_models(profile: Profile) -> list[list[Cell]]:
    """The trained models of the grid, in grid order: each is the list of cells that use it (the
    first one trains it)."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells(profile, include_base=False):
        groups.setdefault(cell.model_id, []).append(cell)
    return list(groups.values())


@dataclass
class GridRun:
    """One cell of the grid, for one training seed, filled with its training set and keyed by
    everything that shapes its trained model (``grid.Experiment.runs`` makes them)."""

    run_id: str
    model: str
    method: str  # lora | full | base
    recipe: str
    name: str
    languages: list[str]
    eval_languages: list[str]
    train_examples: int
    validation_examples: int
    budget_units: float
    epochs: float
    seed: int | None = None  # None for the untuned base model
    training_set: TrainingSet | None = field(default=None, repr=False)
    # Runs with the same model, method, seed and exact training data share one trained model (the
    # English-only model *is* the English monolingual model, as in the paper).
    train_key: str = ""

    @property
    def label(self) -> str:
        """The name users type: METHOD-NAME-sSEED (``lora-multilingual-s42``), or ``base``."""
        return run_label(self.method, self.name, self.seed)

    @property
    def model_key(self) -> str:
        """The trained model's identity: what every answer and score of this run is keyed by."""
        return self.train_key or self.run_id

    def summary(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("training_set")
        return out


# --- how a method's runs are trained and asked -------------------------------------------------

def training_settings(profile: Profile, method: str, seed: int | None) -> TrainConfig:
    """The training settings of ``method``'s run with ``seed``: the method's, the seed in place."""
    return dataclasses.replace(profile.train_config(method), seed=seed)


def train_template(profile: Profile, method: str) -> PromptTemplate:
    """The template ``method`` trains with (and its models' likelihoods are scored with); the
    untuned base model's is Alpaca's."""
    return load_template("alpaca" if method == BASE else profile.train_config(method).template)


def decoding(profile: Profile, method: str) -> DecodingConfig:
    """How ``method``'s models answer: ``eval.decoding_full`` for full fine-tunes when set, else
    ``eval.decoding``."""
    e = profile.eval
    return e.decoding_full if method == "full" and e.decoding_full else e.decoding


def decoding_template(profile: Profile, method: str) -> PromptTemplate:
    """The template the test prompts are asked with: the decoding's own, else the training one."""
    name = decoding(profile, method).template
    return load_template(name) if name else train_template(profile, method)
