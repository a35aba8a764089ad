"""What the artefacts folder keeps: fully fine-tuned models go once their results are stored and
come back (retrained, the same losses) when a later step needs them; run folders hold no
tokenizer copy; one writer per run folder; `polyalpaca clean`; the library notices the terminal
no longer repeats."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from polyalpaca.config import load_profile
from polyalpaca.files import FolderBusy, folder_lock
from polyalpaca.grid import Experiment

SMALL = {"grid.methods": ["lora", "full"], "grid.recipes": ["english-only"], "grid.seeds": [1],
         "data.train_limit": 6, "data.validation_size": 2, "data.test_limit": 2, "data.test_languages": ["en", "ru"],
         "data.unseen_languages": [], "data.train_languages": ["en", "ru"], "eval.evaluate_base_model": False}


def runs_by_method(exp):
    return {r.method: r for r in exp.runs(include_base=False)}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("storage")
    exp = Experiment(load_profile("tiny", SMALL), root)
    exp.train_all()
    runs = runs_by_method(exp)
    trained_files = {m: sorted(p.name for p in (exp.run_dir(r) / "model").iterdir()) for m, r in runs.items()}
    exp.evaluate_all()
    return root, trained_files


@pytest.mark.slow
def test_full_models_go_once_evaluated_and_lora_adapters_stay(evaluated):
    root, trained_files = evaluated
    assert not [f for files in trained_files.values() for f in files if f.startswith("tokenizer")]
    exp = Experiment(load_profile("tiny", SMALL), root)
    runs = runs_by_method(exp)
    assert not (exp.run_dir(runs["full"]) / "model").exists()
    assert (exp.run_dir(runs["lora"]) / "model" / "adapter_config.json").exists()
    assert (exp.run_dir(runs["full"]) / "DONE").exists() and (exp.run_dir(runs["full"]) / "train_result.json").exists()
    assert len(exp.run_answers(runs["full"])) == 4  # the results are what is kept


@pytest.mark.slow
def test_a_model_not_kept_is_retrained_with_the_same_losses(evaluated, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(evaluated[0], root)
    # Other decoding needs new answers, hence the model: it is retrained, then removed again.
    exp = Experiment(load_profile("tiny", {**SMALL, "eval.decoding.max_new_tokens": 3}), root)
    run = runs_by_method(exp)["full"]
    done = exp.evaluate(run)
    out = capsys.readouterr().out
    assert done["generated"] == ["en", "ru"]
    assert f"{run.label}: its model was not kept" in out and "retraining it from its recorded settings" in out
    assert "losses differ" not in out  # seeded training: the recorded losses again
    assert not (exp.run_dir(run) / "model").exists() and not (exp.run_dir(run) / "retrain.partial").exists()
    # A profile that keeps its models gets the folder back and keeps it.
    keep = Experiment(load_profile("tiny", {**SMALL, "storage.keep_full_models": True}), root)
    folder = keep.model_dir(run)
    assert (folder / "model.safetensors").exists()
    keep.evaluate(run)
    assert folder.exists()


def test_one_writer_per_run_folder(tmp_path, tiny_model_dir, capsys):
    exp = Experiment(load_profile("tiny", {**SMALL, "grid.methods": ["lora"]}), tmp_path)
    (run,) = exp.runs(include_base=False)
    folder = exp.run_dir(run)
    with folder_lock(folder):  # another writer holds the run folder
        with pytest.raises(FolderBusy, match=f"{folder} is being written by process"):
            with folder_lock(folder, wait=False):
                pass
        trainer = threading.Thread(target=exp.train, args=(run,))
        trainer.start()
        time.sleep(2)
        assert trainer.is_alive() and not (folder / "run.json").exists()  # it waits, writing nothing
    trainer.join(timeout=300)
    assert (folder / "DONE").exists()
    assert "is being written by process" in capsys.readouterr().out


def test_clean_removes_models_or_everything_and_says_how_much(evaluated, tmp_path, capsys):
    import shutil

    from polyalpaca.cli import main

    root = tmp_path / "copy"
    shutil.copytree(evaluated[0], root)
    args = ["clean", "--profile", "tiny", "--artefacts", str(root)]
    assert main([*args, "--models-only"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"removed 1 model and checkpoint folders under {root}: ") and " GB freed" in out
    assert not list(root.glob("runs/*/model")) and list(root.glob("runs/*/DONE")) and list(root.glob("answers/*"))
    with folder_lock(next(root.glob("runs/*"))):  # a build writing there: nothing is removed
        assert main(args) == 1
        assert "nothing removed" in capsys.readouterr().err and root.exists()
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"removed {root}: ") and not root.exists()
    assert main(args) == 0 and capsys.readouterr().out == f"nothing to remove in {root}\n"


def test_profiles_share_the_model_cache(monkeypatch, tmp_path):
    from polyalpaca.models import resolve_model
    from polyalpaca.paths import artefacts_root, cache_dir

    monkeypatch.setenv("POLYALPACA_ARTEFACTS", str(tmp_path))
    tiny, cpu = Experiment(load_profile("tiny")), Experiment(load_profile("cpu"))
    assert tiny.root != cpu.root and {tiny.root.parent, cpu.root.parent} == {artefacts_root()}
    assert resolve_model("tiny-random-gemma3").startswith(str(cache_dir()))  # one converted copy for every profile


def test_known_library_notices_are_hidden_and_nothing_else():
    code = (
        "import warnings\n"
        "from polyalpaca.progress import quiet_library_warnings\n"
        "quiet_library_warnings()\n"
        "from transformers import Gemma3TextConfig, Gemma3ForCausalLM\n"
        "model = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=16, hidden_size=8, intermediate_size=8,"
        " num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=8))\n"
        "model.is_gradient_checkpointing\n"
        "warnings.warn('is_gradient_checkpointing elsewhere', FutureWarning)\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
    assert "`is_gradient_checkpointing` is deprecated" not in err
    assert "is_gradient_checkpointing elsewhere" in err  # the same words from elsewhere are still shown
