"""Re-execution is always right: every cached result is keyed by what made it (one input changed
at a time: what depends on it is recomputed, the rest reused), errors users meet are clear
messages, and killed jobs resume without reading anything half-written."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyalpaca import evaluate as evaluate_module
from polyalpaca import likelihood as likelihood_module
from polyalpaca.config import load_profile
from polyalpaca.data import DataError, embedded_test
from polyalpaca.grid import Experiment, RunNotTrained, UnknownRun

SMALL = {"grid.methods": ["lora"], "grid.recipes": ["english-only"], "grid.seeds": [1], "data.train_limit": 6,
         "data.validation_size": 2, "data.test_limit": 3, "data.test_languages": ["en", "ru"],
         "data.unseen_languages": [], "data.train_languages": ["en", "ru"], "eval.evaluate_base_model": False}


class Counter:
    """Counts calls of the stages' work functions (generation, likelihood, scoring, model loads)."""

    def __init__(self, monkeypatch):
        self.calls = {"generate": 0, "likelihood": 0, "score": 0, "load": 0}
        for name, module, attr in (("generate", evaluate_module, "answer_prompts"),
                                   ("likelihood", likelihood_module, "answer_likelihoods"),
                                   ("score", evaluate_module, "score_answers"),
                                   ("load", evaluate_module.Evaluation, "load_model")):
            original = getattr(module, attr)
            monkeypatch.setattr(module, attr, self._wrap(name, original))

    def _wrap(self, name, original):
        def wrapper(*args, **kwargs):
            self.calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    def take(self) -> dict:
        out, self.calls = self.calls, {k: 0 for k in self.calls}
        return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("reexec")
    exp = Experiment(load_profile("tiny", SMALL), root)
    exp.train_all()
    return root


def experiment(root, **changes) -> Experiment:
    return Experiment(load_profile("tiny", {**SMALL, **changes}), root)


def the_run(exp):
    (run,) = exp.runs(include_base=False)
    return run


@pytest.mark.slow
def test_each_input_recomputes_exactly_what_depends_on_it(trained, tmp_path, monkeypatch):
    counter = Counter(monkeypatch)
    exp = experiment(trained)
    exp.evaluate(the_run(exp))
    assert counter.take() == {"generate": 2, "likelihood": 2, "score": 2, "load": 1}
    exp.evaluate(the_run(exp))  # nothing changed: nothing recomputed, no model loaded
    assert counter.take() == {"generate": 0, "likelihood": 0, "score": 0, "load": 0}

    # More prompts (data.test_limit): answers, likelihoods and scores of both languages.
    more = experiment(trained, **{"data.test_limit": 4})
    more.evaluate(the_run(more))
    assert counter.take() == {"generate": 2, "likelihood": 2, "score": 2, "load": 1}
    assert len(more.run_answers(the_run(more))) == 8

    # Decoding: answers and their scores again, the likelihood (no decoding) is reused.
    longer = experiment(trained, **{"eval.decoding.max_new_tokens": 9})
    longer.evaluate(the_run(longer))
    assert counter.take() == {"generate": 2, "likelihood": 0, "score": 2, "load": 1}

    # The language detector's seed: only the scores, from the stored answers; no model.
    reseeded = experiment(trained, **{"eval.langid_seed": 3})
    reseeded.evaluate(the_run(reseeded))
    assert counter.take() == {"generate": 0, "likelihood": 0, "score": 2, "load": 0}

    # Another test source with one Russian prompt's text changed (same ids): Russian answers and
    # likelihoods only. Both languages are re-scored: the folder's prompts carry no verifiable
    # answers (the embedded ones do), and those are an input of the scores.
    folder = tmp_path / "tests"
    folder.mkdir()
    for lang in ("en", "ru"):
        rows = [{"id": p.id, "prompt": p.prompt, "reference": p.reference} for p in embedded_test(lang).items]
        if lang == "ru":
            rows[1]["prompt"] = "Назовите три крупнейшие реки Европы."
        (folder / f"test_{lang}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    other = experiment(trained, **{"data.test_source": str(folder)})
    other.evaluate(the_run(other))
    assert counter.take() == {"generate": 1, "likelihood": 1, "score": 2, "load": 1}
    answers = other.run_answers(the_run(other))
    assert "Назовите три крупнейшие реки Европы." in set(answers["prompt"])


def test_the_judge_rates_the_answers_it_is_given(trained, double, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-judge")
    judge = {"eval.judge.base_url": double.base_url, "eval.judge.model": "judge-double",
             "eval.judge.api_key_env": "JUDGE_TEST_KEY"}
    exp = experiment(trained, **judge)
    exp.evaluate(the_run(exp))
    first = exp.judge_all()
    assert first["scored"] == 6 and double.request_count() == 6
    assert exp.judge_all()["scored"] == 6 and double.request_count() == 6  # stored verdicts reused
    # New answers (another decoding): the old verdicts are not attached to them.
    longer = experiment(trained, **judge, **{"eval.decoding.max_new_tokens": 9})
    longer.evaluate(the_run(longer))
    longer.judge_all()
    assert double.request_count() > 6
    frame = longer.answers_frame()
    assert frame["judge"].notna().all()


def test_clear_errors_for_what_users_do(trained, tmp_path):
    exp = experiment(trained, **{"grid.seeds": [7]})
    with pytest.raises(RunNotTrained, match=r"run lora-english-only-s7 is not trained yet .*polyalpaca train "
                                            r"--profile tiny --run lora-english-only-s7"):
        exp.evaluate(the_run(exp))
    with pytest.raises(UnknownRun, match=r"no run 'lora-multilingual' in profile tiny\. Runs: base, lora-english-only"):
        exp.find_runs("lora-multilingual")
    missing = experiment(trained, **{"data.test_source": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match=r"nowhere/test_en\.jsonl: no such folder"):
        missing.test_prompts("en")
    bad = tmp_path / "bad"
    bad.mkdir()
    good = [json.dumps({"id": f"t{i}", "prompt": "A question?", "reference": "An answer."}) for i in range(3)]
    (bad / "test_en.jsonl").write_text("\n".join([good[0], '{"id": "t9", "prompt": "unclosed', good[1], good[2]]) + "\n")
    strict = experiment(trained, **{"data.test_source": str(bad)})
    with pytest.raises(DataError, match=r"test_en\.jsonl, line 2: invalid JSON: .*\(column \d+\)"):
        strict.test_prompts("en")
    lenient = experiment(trained, **{"data.test_source": str(bad), "data.skip_bad_records": True})
    assert len(lenient.test_prompts("en")) == 3 and lenient.skipped == {"test prompts en": 1}


def test_cli_says_what_to_do_for_an_untrained_run(trained, capsys):
    from polyalpaca.cli import main

    code = main(["evaluate", "--profile", "tiny", "--artefacts", str(trained), "--run", "lora-english-only-s9",
                 *sum((["-s", k, json.dumps(v)] for k, v in {**SMALL, "grid.seeds": [9]}.items()), [])])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "run lora-english-only-s9 is not trained yet" in err and "polyalpaca train --profile tiny" in err


def test_judge_endpoint_down_is_a_message_and_nothing_is_stored(trained, monkeypatch):
    from polyalpaca.llm_client import ChatClient, EndpointConfig

    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-judge")
    exp = experiment(trained, **{"eval.judge.base_url": "http://127.0.0.1:9/v1", "eval.judge.model": "judge",
                                 "eval.judge.api_key_env": "JUDGE_TEST_KEY"})
    exp.evaluate(the_run(exp))
    with ChatClient(EndpointConfig.of(exp.profile.eval.judge, max_retries=1, timeout_s=2.0, backoff_base_s=0.01),
                    trained / "llm-cache", progress=False) as fast_failing:
        result = exp.judge_all(client=fast_failing)
    assert result["failed"] == 6 and "did not answer" in result["message"]
    # No verdicts of this judge were stored (a later run retries them); other judges' may exist.
    stored = [json.loads(p.read_text()) for p in trained.glob("judge/*/*.inputs.json")]
    assert not [s for s in stored if s["judge_model"] == "judge"]
    assert not exp.answers_frame()["judge"].notna().any()


def _cli(root: Path, *args: str, overrides: dict) -> list[str]:
    sets = sum((["-s", k, json.dumps(v)] for k, v in overrides.items()), [])
    return [sys.executable, "-m", "polyalpaca", *args, "--profile", "tiny", "--artefacts", str(root), *sets]


def _kill_when(cmd: list[str], ready, timeout: float = 300) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    start = time.time()
    while not ready():
        if proc.poll() is not None or time.time() - start > timeout:
            proc.kill()
            pytest.fail(f"the job ended (exit {proc.returncode}) before the moment to kill it")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_evaluation_resumes_with_finished_languages_reused(trained, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("answers", "scores", "likelihood", "judge"))
    overrides = {**SMALL, "data.test_languages": ["en", "ru"], "eval.decoding.max_new_tokens": 24}
    cmd = _cli(root, "evaluate", "--run", "lora-english-only", overrides=overrides)
    _kill_when(cmd, lambda: len(list((root / "answers").rglob("*.jsonl"))) >= 1)
    finished = {p: p.stat().st_mtime_ns for p in (root / "answers").rglob("*.jsonl")}
    assert finished  # at least one language was finished before the kill (a .tmp file is never read)
    subprocess.run(cmd, check=True, capture_output=True)
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    exp = Experiment(load_profile("tiny", overrides), root)
    assert len(exp.run_answers(the_run(exp))) == 6


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    overrides = {**SMALL, "lora.epochs": 3, "data.train_limit": 10}
    root = tmp_path / "art"
    cmd = _cli(root, "train", "--run", "lora-english-only-s1", overrides=overrides)
    _kill_when(cmd, lambda: any(root.rglob("checkpoint-*/trainer_state.json")))
    assert not any(root.rglob("DONE"))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    (done,) = root.rglob("DONE")
    result = json.loads((done.parent / "train_result.json").read_text())
    epochs = sorted({h["epoch"] for h in result["log_history"] if "eval_loss" in h})
    assert result["steps"] == 3 * 2 and epochs == [1.0, 2.0, 3.0] and "lora-english-only-s1" in out


@pytest.mark.slow
def test_a_chapter_past_its_timeout_is_stopped_and_named(tmp_path):
    from polyalpaca.book import ChapterError, execute_chapter

    params = {"profile": "tiny", "artefacts_dir": str(tmp_path / "artefacts"), "overrides": {}}
    start = time.time()
    with pytest.raises(ChapterError, match=r"chapter 03_training timed out after 4 s and was stopped"):
        execute_chapter("03_training", params, tmp_path / "03_training.ipynb", timeout_s=4)
    assert time.time() - start < 60
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not leftover  # the chapter's kernel went with it


def test_translation_study_is_keyed_by_its_settings(tmp_path, tiny_model_dir, monkeypatch):
    from polyalpaca import translate

    calls = []
    original = translate.translate_records
    monkeypatch.setattr(translate, "translate_records", lambda *a, **k: calls.append(1) or original(*a, **k))
    settings = load_profile("tiny").translation
    first = translate.translation_study(settings, tmp_path)
    again = translate.translation_study(settings, tmp_path)
    assert len(calls) == 1 and again == first
    fewer = load_profile("tiny", {"translation.records": 1}).translation
    assert translate.translation_study(fewer, tmp_path)["records"] == 1 and len(calls) == 2
