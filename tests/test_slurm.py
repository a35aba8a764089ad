"""The SLURM array over a grid, offline: the job list (cells, ids, which are done) from the data
and from the profile's description alone, and the batch script's launch commands per node."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from polyalpaca.config import load_profile
from polyalpaca.grid import Experiment
from polyalpaca.slurm import array_spec, grid_jobs

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "train_grid.sbatch"
# A small LoRA grid: 3 training languages, every recipe, 4 records per language.
SETTINGS = {"grid.methods": '["lora"]', "data.train_limit": "4", "data.validation_size": "1"}


def test_array_spec():
    assert array_spec([7, 0, 1, 2, 3, 5, 8]) == "0-3,5,7-8"
    assert array_spec([4]) == "4" and array_spec([]) == ""


def test_job_list_from_the_data_and_from_the_description(tmp_path, tiny_model_dir):
    exp = Experiment(load_profile("tiny", SETTINGS), tmp_path)
    listing = grid_jobs(exp)
    assert listing.from_data and not listing.note
    assert [(j.index, j.label, j.status) for j in listing.jobs] == [
        (0, "lora-monolingual-en-s42", "todo"), (1, "lora-monolingual-ru-s42", "todo"),
        (2, "lora-monolingual-zh-s42", "todo"), (3, "lora-multilingual-s42", "todo"),
        (4, "lora-downsampled-s42", "todo"), (5, "lora-dose-ru-2-s42", "todo"), (6, "lora-dose-ru+zh-2-s42", "todo")]
    # English-only trains the English monolingual model: one job, never two tasks in one folder.
    assert listing.jobs[0].shared_with == ("lora-english-only-s42",)
    runs = {r.label: r for r in exp.runs(include_base=False)}
    assert [j.run_id for j in listing.jobs] == [runs[j.label].run_id for j in listing.jobs]

    exp.train(runs["lora-monolingual-ru-s42"])
    listing = grid_jobs(Experiment(load_profile("tiny", SETTINGS), tmp_path))
    assert [j.status for j in listing.jobs] == ["todo", "done", "todo", "todo", "todo", "todo", "todo"]
    assert array_spec([j.index for j in listing.jobs if not j.done]) == "0,2-6"

    # The same list where the data cannot be read: same indices and labels, done from the records.
    unreadable = Experiment(load_profile("tiny", {**SETTINGS, "data.source": "files",
                                                   "data.files_pattern": str(tmp_path / "missing-{lang}.json")}),
                            tmp_path)
    described = grid_jobs(unreadable)
    assert not described.from_data and "not readable" in described.note
    assert [(j.index, j.label, j.status, j.shared_with) for j in described.jobs] == \
        [(j.index, j.label, j.status, j.shared_with) for j in listing.jobs]
    # A changed training setting is another model: not done.
    changed = Experiment(load_profile("tiny", {**SETTINGS, "data.source": "files", "lora.learning_rate": "5e-4",
                                               "data.files_pattern": str(tmp_path / "missing-{lang}.json")}), tmp_path)
    assert all(j.status == "todo" for j in grid_jobs(changed).jobs)


def test_paper_job_list_offline(tmp_path):
    """The paper's data are on the Hub, unreachable here: the list comes from the grid description."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "POLYALPACA_ARTEFACTS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "polyalpaca", "slurm", "jobs", "--profile", "paper"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    # 5 BLOOM sizes x 2 methods x (9 monolingual + multilingual + downsampled + 3 doses + the same 3 split
    # with German; English-only shares monolingual-en)
    assert len(rows) == 170 and [int(r[0]) for r in rows] == list(range(170))
    assert rows[0] == ["0", "lora-monolingual-en-s42", "todo", "same model: lora-english-only-s42"]
    assert rows[9][:3] == ["9", "lora-multilingual-s42", "todo"] and rows[163][1] == "full-downsampled-s42"
    assert rows[166][1] == "full-dose-ru-5176-s42" and rows[169][1] == "full-dose-ru+de-5176-s42"
    assert "not readable here" in out.stderr
    array = subprocess.run([sys.executable, "-m", "polyalpaca", "slurm", "array", "--profile", "paper",
                            "--max-parallel", "8"], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert array.stdout.strip() == "0-169%8"


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_batch_script_starts_one_launcher_per_node_for_its_job(tmp_path, tiny_model_dir):
    """Stand-ins for srun, scontrol and accelerate record what the script would start on 2 nodes."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    # srun: run the command once per node with that node's SLURM_NODEID (options before it dropped).
    _executable(bin_dir / "srun", '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                  'for ((n = 0; n < SLURM_NNODES; n++)); do SLURM_NODEID=$n "$@" || exit 1; done\n')
    _executable(bin_dir / "scontrol", '#!/bin/bash\n[ "$1 $2 $3" = "show hostnames gpu[01-02]" ] && printf "gpu01\\ngpu02\\n"\n')
    _executable(bin_dir / "accelerate", f'#!{sys.executable}\nimport json, sys\n'
                                        f'open({str(calls)!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n')
    settings = [a for key, value in SETTINGS.items() for a in ("-s", key, value)]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "3", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu[01-02]", "GPUS_PER_NODE": "4", "PROFILE": "tiny", "PYTHON": sys.executable,
           "POLYALPACA_ARTEFACTS": str(tmp_path / "artefacts")}
    out = subprocess.run(["bash", str(SBATCH), *settings], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = grid_jobs(Experiment(load_profile("tiny", SETTINGS), tmp_path / "artefacts" / "tiny")).jobs[3].run_id
    assert "multilingual" in run_id
    launches = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(launches) == 2
    for rank, argv in enumerate(launches):
        options = dict(zip(argv[1:15:2], argv[2:15:2]))
        assert argv[0] == "launch" and options == {
            "--config_file": "polyalpaca/accelerate/multi_node_ddp.yaml", "--num_machines": "2",
            "--num_processes": "8", "--machine_rank": str(rank), "--main_process_ip": "gpu01",
            "--main_process_port": "29503", "-m": "polyalpaca"}
        assert argv[15:] == ["train", "--profile", "tiny", "--run", run_id, *settings]
    assert f"run {run_id} on 2 node(s) x 4 process(es)" in out.stdout

    missing = subprocess.run(["bash", str(SBATCH)], env={**env, "POLYALPACA_ARTEFACTS": ""}, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "POLYALPACA_ARTEFACTS" in missing.stderr


# --- the paper profile's structure, in miniature --------------------------------------------------

LANGS = ["en", "ru", "zh"]


def _paper_in_miniature(tmp_path: Path, double, key_env: str) -> list[str]:
    """-s settings that turn the paper profile into a miniature of itself: its data as Hub-layout
    folders (one Alpaca JSON array each, rows aligned by index) and its test prompts in the paper's
    format (id and prompt only, one malformed line), the paper's beam search with
    no_repeat_ngram_size, the judge through the test double; the tiny model and a few records."""
    from polyalpaca.data import embedded_test, embedded_train

    for lang in [*LANGS, "de"]:  # German: the paper profile's second dose language, read beside the others
        folder = tmp_path / "hub" / ("alpaca-cleaned" if lang == "en" else f"alpaca-cleaned-{lang}")
        folder.mkdir(parents=True)
        rows = [{"instruction": r.instruction, "input": r.input, "output": r.output}
                for r in embedded_train(lang).items[:10]]
        (folder / "alpaca_data_cleaned.json").write_text(json.dumps(rows, ensure_ascii=False))
    tests = tmp_path / "paper-tests"
    tests.mkdir()
    for lang in [*LANGS, "no"]:
        lines = [json.dumps({"id": p.id, "prompt": p.prompt}, ensure_ascii=False) for p in embedded_test(lang).items[:2]]
        if lang == "ru":
            lines.insert(1, '{"id": "broken", "prompt": ')  # one malformed line, as real files have
        (tests / f"test_{lang}.jsonl").write_text("\n".join(lines) + "\n")
    settings = {
        "data.source": "hub", "data.hub_english": str(tmp_path / "hub" / "alpaca-cleaned"),
        "data.hub_pattern": str(tmp_path / "hub" / "alpaca-cleaned-{lang}"), "data.train_languages": json.dumps(LANGS),
        "data.test_languages": json.dumps([*LANGS, "no"]), "data.unseen_languages": '["no"]',
        "data.validation_size": "2", "data.test_source": str(tests), "data.skip_bad_records": "true",
        "grid.models": '["tiny-random-gemma3"]', "grid.model_params_billions": '{"tiny-random-gemma3": 0.01}',
        "lora.lora.target_modules": '["q_proj", "v_proj"]', "lora.epochs": "1", "lora.max_length": "64",
        "lora.effective_batch": "8", "full.epochs": "1", "full.max_length": "64", "full.effective_batch": "8",
        "eval.decoding.max_new_tokens": "6", "eval.decoding_full.max_new_tokens": "6",
        "eval.judge.base_url": double.base_url, "eval.judge.model": "judge-double", "eval.judge.api_key_env": key_env,
        "grid.doses": "[2]",
    }
    return [a for key, value in settings.items() for a in ("-s", key, value)]


@pytest.mark.slow
def test_paper_profile_in_miniature(tmp_path, tiny_model_dir, double, monkeypatch, capsys):
    """The paper profile's own settings on miniature data: check and plan, the array's job list
    from the data, one job trained as a task trains it, evaluated with the paper's beam search and
    judged through the test double."""
    from polyalpaca.cli import main as cli

    monkeypatch.setenv("POLYALPACA_JUDGE_KEY", "sk-judge-test")
    paper = str(ROOT / "polyalpaca" / "profiles" / "paper.toml")
    settings = _paper_in_miniature(tmp_path, double, "POLYALPACA_JUDGE_KEY")
    artefacts = tmp_path / "artefacts"
    common = ["--profile", paper, "--artefacts", str(artefacts), *settings]
    assert cli(["check", *common]) == 0
    assert cli(["plan", *common]) == 0
    out = capsys.readouterr().out
    assert "lora-multilingual" in out and "data not readable" not in out

    profile = load_profile(paper, dict(zip(settings[1::3], settings[2::3])))
    assert (profile.eval.decoding.num_beams, profile.eval.decoding.no_repeat_ngram_size) == (4, 6)
    exp = Experiment(profile, artefacts)
    listing = grid_jobs(exp)
    assert listing.from_data and len(listing.jobs) == 14  # 2 methods x (3 monolingual + multilingual + downsampled + 1 dose + its split)
    job = next(j for j in listing.jobs if j.label == "lora-multilingual-s42")
    assert cli(["train", *common, "--run", job.run_id]) == 0
    assert [j.index for j in grid_jobs(Experiment(profile, artefacts)).jobs if j.done] == [job.index]
    record = json.loads((exp.run_dir(next(r for r in exp.runs(include_base=False) if r.run_id == job.run_id))
                         / "run.json").read_text())
    assert (record["processes"], record["gradient_accumulation"], record["examples_per_optimizer_step"]) == (1, 2, 8)

    run = next(r for r in exp.runs(include_base=False) if r.run_id == job.run_id)
    exp.evaluate(run)
    answers = exp.run_answers(run)
    assert len(answers) == 2 * 4  # two prompts per test language
    assert exp.skipped == {"test prompts ru": 1}  # the malformed line, skipped and counted
    judged = exp.judge_all()
    assert judged["scored"] == len(answers) and judged["failed"] == 0
    judge_requests = [r for r in double.requests if r.path.endswith("/chat/completions")]
    assert len(judge_requests) == len(answers) and all(r.json["model"] == "judge-double" for r in judge_requests)


def test_slurm_and_serve_are_polyalpaca_commands_through_the_preflight(tmp_path, tiny_model_dir, capsys):
    """`polyalpaca slurm` and `polyalpaca serve` read the profile through the same checked path as
    every other command: a bad setting is listed and nothing runs (exit status 2)."""
    from polyalpaca.cli import main

    common = ["--profile", "tiny", "--artefacts", str(tmp_path), *[a for k, v in SETTINGS.items() for a in ("-s", k, v)]]
    assert main(["slurm", "jobs", *common]) == 0
    assert capsys.readouterr().out.splitlines()[3] == "3\tlora-multilingual-s42\ttodo"
    assert main(["slurm", "run", "--index", "3", *common]) == 0
    assert "multilingual" in capsys.readouterr().out
    assert main(["slurm", "run", "--index", "99", *common]) == 2
    assert main(["serve", *common]) == 0
    assert capsys.readouterr().out.startswith("vllm serve ")
    for command in (["slurm", "jobs"], ["serve"]):
        assert main([*command, *common, "-s", "lora.epochs", "-1"]) == 2
        assert "lora.epochs" in capsys.readouterr().err
