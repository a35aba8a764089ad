"""The one description of a profile's runs (``polyalpaca.design``): computable without data, the
same runs as training's, and the one source of training's run list, the plan, the SLURM jobs and
the book's design page."""
from __future__ import annotations

import re

import pytest

from polyalpaca import design, recipes
from polyalpaca.book import design_page
from polyalpaca.config import TrainConfig, load_profile
from polyalpaca.grid import Experiment
from polyalpaca.planning import plan_table
from polyalpaca.slurm import grid_jobs

LORA = {"grid.methods": '["lora"]'}


def test_labels_and_short_names():
    assert design.model_short_name("pypi:gemma-3-270m") == "gemma-3-270m"
    assert design.model_short_name("bigscience/bloom-7b1/") == "bloom-7b1"
    assert design.run_label("lora", "multilingual", 42) == "lora-multilingual-s42"
    assert design.run_label("base", "base", None) == "base"


def test_the_paper_grid_without_its_data():
    """The paper's data are on the Hub: the grid is described from the profile alone."""
    p = load_profile("paper")
    cells = design.cells(p)
    # one monolingual run per language + 3 recipes + one run per dose, and per dose its split with
    # the second language (grid.dose_mix_language)
    per_seed = len(p.data.train_languages) + 3 + 2 * len(p.grid.doses)
    assert len(cells) == len(p.grid.models) * len(p.grid.methods) * len(p.grid.seeds) * per_seed
    shared = [c for c in cells if c.same_model_as]
    assert {c.name for c in shared} == {"english-only"} and all(c.trained_as == "monolingual-en" for c in shared)
    assert len(design.trained_models(p)) == len(cells) - len(shared)


def test_steps_follow_the_effective_batch_as_training_takes_it():
    plain = TrainConfig(batch_size=4, gradient_accumulation=2, epochs=3)
    assert design.examples_per_step(plain) == 8 and design.optimizer_steps(17, plain) == 9
    paper = TrainConfig(batch_size=4, gradient_accumulation=16, effective_batch=128, epochs=1)
    assert design.gradient_accumulation_steps(paper) == 32 and design.examples_per_step(paper) == 128
    assert design.optimizer_steps(1000, paper) == 8  # not 16, as batch_size x gradient_accumulation would say
    assert design.examples_per_step(paper, processes=8) == 128


def test_training_runs_are_the_described_cells_with_the_same_shared_models(tmp_path, tiny_model_dir):
    p = load_profile("tiny")
    runs = Experiment(p, tmp_path).runs(include_base=True)
    cells = design.cells(p, include_base=True)
    assert [(r.label, r.model, r.method, r.recipe, tuple(r.languages), tuple(r.eval_languages), r.budget_units)
            for r in runs] == [(c.label, c.model, c.method, c.recipe, c.languages, c.eval_languages, c.budget_units)
                               for c in cells]
    # The data's keys share exactly the models the rules say are shared.
    trained = [r for r in runs if r.method != "base"]
    by_key = {}
    for r in trained:
        by_key.setdefault(r.model_key, []).append(r.label)
    assert sorted(by_key.values()) == sorted([c.label for c in group] for group in design.trained_models(p))


def _steps(page: str, method: str) -> dict[str, int]:
    line = next(l for l in page.splitlines() if l.startswith(f"| {method}: steps per run"))
    return {name: int(n) for name, n in re.findall(r"([a-z-]+) (\d+)", line.split("|")[2].split("(")[0])}


def test_the_design_page_counts_steps_from_the_effective_batch(tmp_path, tiny_model_dir):
    settings = {**LORA, "lora.batch_size": "2", "lora.gradient_accumulation": "1"}
    one = _steps(design_page("tiny", settings, str(tmp_path)), "lora")
    two = _steps(design_page("tiny", {**settings, "lora.effective_batch": "4"}, str(tmp_path)), "lora")
    assert one["multilingual"] > 1
    assert two == {name: -(-n // 2) for name, n in one.items()}


def test_one_recipe_rule_changed_and_every_reader_follows(tmp_path, tiny_model_dir, monkeypatch):
    """Change a recipe rule (the downsampled cell's name) and training's run list, the plan, the
    SLURM job list and the book's design page all show the new cell, and none the old one."""
    original = recipes.recipe_cells

    def renamed(recipe, languages, recipes_=None, *doses):
        return [recipes.RecipeCell("downsampled-mix", c.languages, c.sets_of_one_language, c.budget_units,
                                   c.same_model_as) if c.name == "downsampled" else c
                for c in original(recipe, languages, recipes_, *doses)]

    monkeypatch.setattr(recipes, "recipe_cells", renamed)
    exp = Experiment(load_profile("tiny", LORA), tmp_path)
    want = "lora-downsampled-mix-s42"
    labels = {
        "training": [r.label for r in exp.runs(include_base=False)],
        "plan": [r["run"] for r in plan_table(exp)["runs"]],
        "slurm": [j.label for j in grid_jobs(exp).jobs],
        "design page": list(_steps(design_page("tiny", LORA, str(tmp_path)), "lora")),
    }
    labels["design page"] = [design.run_label("lora", name, 42) for name in labels["design page"]]
    for reader, names in labels.items():
        assert want in names and "lora-downsampled-s42" not in names, reader
    assert labels["training"] == labels["plan"] == [c.label for c in design.cells(exp.profile, include_base=False)]


@pytest.mark.parametrize("profile", ["tiny", "class", "cpu", "paper"])
def test_every_shipped_profile_is_described_without_data(profile):
    cells = design.cells(load_profile(profile), include_base=True)
    assert cells and len({(c.model, c.label) for c in cells}) == len(cells)
