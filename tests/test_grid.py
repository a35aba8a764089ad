"""The experiment (``polyalpaca.grid.Experiment``): the described runs filled with their data and
keyed by everything that shapes them, finished runs reused, each seed its own sample."""
import json

import pytest

from polyalpaca.config import load_profile
from polyalpaca.grid import Experiment


def test_per_method_template_validation_and_decoding_are_keyed(tmp_path):
    base = {"grid.recipes": ["monolingual", "multilingual"]}
    plain = Experiment(load_profile("tiny", base), tmp_path)
    paper_like = Experiment(load_profile("tiny", {**base, "full.template": "alpaca-full", "full.use_validation": False,
                                                  "full.best_by_validation": False, "lora.validation_limit": 2,
                                                  "eval.decoding_full": {"template": "alpaca-full-inference",
                                                                         "skip_special_tokens": False,
                                                                         "max_new_tokens": 6}}), tmp_path)
    before, after = ({r.label: r for r in e.runs(include_base=False)} for e in (plain, paper_like))
    # LoRA: the same data, except the pooled multilingual set, whose validation is cut to 2 records.
    assert before["lora-monolingual-en-s42"].training_set == after["lora-monolingual-en-s42"].training_set
    assert before["lora-multilingual-s42"].validation_examples == 6 and after["lora-multilingual-s42"].validation_examples == 2
    assert before["lora-multilingual-s42"].run_id != after["lora-multilingual-s42"].run_id
    # Full tuning: another template, and the held-out records are trained on, with no validation.
    full_before, full_after = before["full-monolingual-ru-s42"], after["full-monolingual-ru-s42"]
    assert full_before.run_id != full_after.run_id
    assert full_after.validation_examples == 0
    assert full_after.train_examples == full_before.train_examples + full_before.validation_examples
    assert paper_like.train_template("full").name == "alpaca-full"
    assert paper_like.decoding_template("full").name == "alpaca-full-inference"
    assert paper_like.decoding_template("lora").name == "alpaca"
    answers = paper_like.answers_of(full_after, "ru")
    assert answers.inputs["template"]["name"] == "alpaca-full-inference"
    assert answers.inputs["decoding"]["skip_special_tokens"] is False
    assert paper_like.answers_of(after["lora-monolingual-en-s42"], "en").inputs["template"]["name"] == "alpaca"


@pytest.mark.slow
def test_grid_caches_finished_runs(tmp_path, tiny_model_dir):
    profile = load_profile("tiny", {"grid.methods": ["lora"], "grid.recipes": ["english-only"], "data.train_limit": 6})
    exp = Experiment(profile, tmp_path)
    (run,) = exp.runs(include_base=False)
    assert not exp.is_trained(run)
    first = exp.train(run)
    assert exp.is_trained(run)
    stamp = (exp.run_dir(run) / "DONE").stat().st_mtime
    second = exp.train(run)
    assert second == first and (exp.run_dir(run) / "DONE").stat().st_mtime == stamp
    recorded = json.loads((exp.run_dir(run) / "run.json").read_text())
    assert recorded["seed"] == profile.lora.seed and "transformers" in recorded["versions"]
    changed = Experiment(load_profile("tiny", {"grid.methods": ["lora"], "grid.recipes": ["english-only"],
                                               "data.train_limit": 6, "lora.learning_rate": 5e-4}), tmp_path)
    assert changed.runs(include_base=False)[0].run_id != run.run_id
    # Another seed is another run, with its own model.
    reseeded = Experiment(load_profile("tiny", {"grid.methods": ["lora"], "grid.recipes": ["english-only"],
                                                "data.train_limit": 6, "grid.seeds": [7]}), tmp_path)
    (other,) = reseeded.runs(include_base=False)
    assert other.run_id != run.run_id and other.label == "lora-english-only-s7" and not reseeded.is_trained(other)
    # Answers are stored per language under a key of what made them, and reused.
    done = exp.evaluate(run)
    assert set(done["generated"]) == set(profile.data.test_languages) and done["loaded"]
    answers = exp.run_answers(run)
    assert set(answers["lang"]) == set(profile.data.test_languages)
    stored = exp.answers_of(run, "ru")
    stamp = stored.path.stat().st_mtime
    again = exp.evaluate(run)
    assert again == {"generated": [], "likelihood_scored": [], "loaded": False}
    assert exp.run_answers(run)["response"].tolist() == answers["response"].tolist()
    assert stored.path.stat().st_mtime == stamp
    assert json.loads(stored.inputs_path.read_text())["decoding"]["max_new_tokens"] == 6


def test_each_seed_draws_its_own_sample_and_recipes_of_a_seed_share_it(tmp_path):
    """A training seed redraws the training records (stratified); the validation ids stay the same
    for every seed; the recipes trained with one seed use that seed's records."""
    from polyalpaca.config import load_profile
    exp = Experiment(load_profile("tiny", {"grid.seeds": [1, 2], "data.train_limit": 8, "data.validation_size": 2}),
                     tmp_path)
    one, two = exp.split(1), exp.split(2)
    ids = {seed: {r.id for r in exp.split(seed).train["en"]} for seed in (1, 2)}
    assert len(ids[1]) == len(ids[2]) == 6 and ids[1] != ids[2]
    assert one.validation_ids == two.validation_ids and not (ids[1] | ids[2]) & set(one.validation_ids)
    for seed in (1, 2):
        sets = {ts.name: ts for ts in exp.training_sets(seed)}
        assert {r.id for r in sets["monolingual-en"].train} == ids[seed]
        assert {r.id for r in sets["multilingual"].train} == ids[seed]
        assert {r.id for r in sets["downsampled"].train} <= ids[seed]
