"""The command line on the tiny profile (and the paper profile's offline estimate)."""
import json
import os
import subprocess
import sys

import pytest

from polyalpaca.cli import build_parser, main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "polyalpaca", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_help_lists_every_command():
    text = build_parser().format_help()
    for command in ("check", "book", "run", "plan", "data", "train", "evaluate", "translate", "slurm", "serve",
                    "prepare-model", "clean"):
        assert command in text


HEAVY = ("torch", "transformers", "trl", "peft", "openai", "pandas")


def test_help_imports_nothing_heavy():
    code = ("import sys, contextlib, io\n"
            "from polyalpaca import cli\n"
            "cli.build_parser().format_help()\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[]\n"


def test_a_bad_value_stops_plan(capsys):
    assert main(["plan", "--profile", "tiny", "-s", "lora.epochs", "abc"]) == 2
    assert capsys.readouterr().err == "polyalpaca: the profile has 1 problem:\n  - lora.epochs: expected a number, got 'abc'\n"
    out = run_cli("plan", "--profile", "tiny", "-s", "lora.epochs", "abc")
    assert out.returncode == 2 and "lora.epochs: expected a number, got 'abc'" in out.stderr and not out.stdout


def test_long_commands_list_every_problem_before_importing_torch(tmp_path):
    bad = ["-s", "lora.loss_on", "everything", "-s", "data.train_languages", '["en", "xx"]']
    commands = [["train", "--profile", "tiny", "--run", "lora-multilingual", *bad],
                ["evaluate", "--profile", "tiny", "--run", "lora-multilingual", *bad],
                ["book", "--profile", "tiny", "--book-dir", str(tmp_path / "book"), *bad],
                ["run", "data", "--profile", "tiny", "--output", str(tmp_path / "01.ipynb"), *bad],
                ["run", "data", "-p", "profile", "tiny", "-p", "lora.loss_on", "everything",
                 "-s", "data.train_languages", '["en", "xx"]'],
                ["check", "--profile", "tiny", *bad],
                ["data", "stats", "--profile", "tiny", *bad]]
    code = ("import sys, json\n"
            "from polyalpaca import cli\n"
            f"codes = [cli.main(argv) for argv in {commands!r}]\n"
            f"print(json.dumps([codes, sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "POLYALPACA_ARTEFACTS": str(tmp_path / "artefacts")})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[2] * len(commands), []]
    message = ("polyalpaca: the profile has 2 problems:\n"
               "  - lora.loss_on: expected all or response, got 'everything'\n"
               "  - data.train_languages: unknown language code 'xx'; known: "
               "en, bg, cs, de, es, fi, fr, ru, zh, bn, no, hi, it, pt, nl, pl, uk, sv, da, ja, ko, ar, tr\n")
    assert out.stderr == message * len(commands)
    assert not (tmp_path / "book").exists() and not (tmp_path / "01.ipynb").exists()
    assert not (tmp_path / "artefacts").exists()


def test_check_reports_the_estimates(tiny_model_dir, tmp_path, capsys):
    assert main(["check", "--profile", "tiny", "--artefacts", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "profile tiny: no problems found"
    assert lines[1].startswith("plan: 16 runs, 14 models trained, ") and lines[1].endswith(" training tokens")
    assert lines[2].startswith("time (estimate): ") and lines[2].endswith(
        " CPU minutes of training on this machine's CPU (2 cores), tiny random model")
    assert lines[3] == ("disk (estimate from model sizes): 0.0 GB of fully fine-tuned models while the book runs, "
                        "0.0 GB of them kept after evaluation (storage.keep_full_models = false), up to 0.0 GB more "
                        "for a running full fine-tune's checkpoints; LoRA adapters are small")
    assert lines[4] == "  not counted, size unknown (set grid.model_params_billions): tiny-random-gemma3"
    assert lines[5].startswith(f"  free on the artefacts folder's disk ({tmp_path}): ") and lines[5].endswith(" GB")
    assert len(lines) == 6


def test_check_names_a_missing_judge_key(monkeypatch, capsys):
    monkeypatch.delenv("POLYALPACA_CLI_TEST_KEY", raising=False)
    assert main(["check", "--profile", "tiny", "-s", "eval.judge.base_url", "http://localhost:9/v1",
                 "-s", "eval.judge.model", "judge", "-s", "eval.judge.api_key_env", "POLYALPACA_CLI_TEST_KEY"]) == 2
    assert capsys.readouterr().err == (
        "polyalpaca: the profile has 1 problem:\n  - eval.judge.api_key_env: the environment variable "
        "POLYALPACA_CLI_TEST_KEY is not set; the judge (judge) needs its key (or set eval.judge.base_url and "
        "eval.judge.model to '' for offline scores only)\n")


def test_check_lists_every_setting(capsys):
    assert main(["check", "--profile", "cpu", "--list-settings", "-s", "lora.epochs", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "lora.epochs = 3.0    # a number: passes over the training set" in lines
    assert 'data.train_languages = ["en", "ru"]    # a list of strings: languages of the training data' in lines


def test_run_takes_the_same_options_and_the_p_aliases():
    from polyalpaca.cli import run_parameters

    args = build_parser().parse_args(["run", "training", "--profile", "tiny", "-s", "lora.epochs", "2",
                                      "-p", "artefacts_dir", "/tmp/a", "-p", "data.train_limit", "6",
                                      "-p", "overrides", '{"full.epochs": 3}'])
    assert run_parameters(args) == {"profile": "tiny", "artefacts_dir": "/tmp/a",
                                    "overrides": {"data.train_limit": "6", "full.epochs": 3, "lora.epochs": "2"}}
    args = build_parser().parse_args(["run", "data"])
    assert run_parameters(args) == {"profile": "cpu", "artefacts_dir": "", "overrides": {}}
    args = build_parser().parse_args(["run", "data", "--profile", "tiny", "-p", "profile", "cpu"])
    with pytest.raises(ValueError, match="--profile tiny and -p profile cpu disagree"):
        run_parameters(args)
    args = build_parser().parse_args(["run", "data", "-p", "overrides", "lora.epochs=2"])
    with pytest.raises(ValueError, match="-p overrides: expected a JSON object"):
        run_parameters(args)


@pytest.mark.slow
def test_a_chapter_with_a_bad_override_stops_in_its_first_cell(tmp_path):
    """What papermill shows when a chapter is run with a mistyped override (bypassing the
    command line's own check): the first code cell fails with the preflight's message."""
    from polyalpaca.book import ChapterError, execute_chapter

    out = tmp_path / "01_data.ipynb"
    params = {"profile": "tiny", "artefacts_dir": str(tmp_path / "artefacts"), "overrides": {"lora.epochs": "abc"}}
    with pytest.raises(ChapterError, match=r"chapter 01_data failed .*01_data\.ipynb"):
        execute_chapter("01_data", params, out)
    cells = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    first = next(c for c in cells if not {"parameters", "injected-parameters"} & set(c["metadata"].get("tags", [])))
    errors = [o for o in first["outputs"] if o["output_type"] == "error"]
    assert [(e["ename"], e["evalue"]) for e in errors] == [
        ("SettingsError", "the profile has 1 problem:\n  - lora.epochs: expected a number, got 'abc'")]
    assert not (tmp_path / "artefacts").exists()


def test_data_stats_json(tiny_model_dir, capsys):
    assert main(["data", "stats", "--profile", "tiny", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["languages"]) == {"en", "ru", "zh"}
    assert stats["languages"]["en"]["train"] == 8 and stats["languages"]["en"]["tokens_total"] > 0
    assert stats["recipes"]["multilingual"]["budget_units"] == 3.0
    assert stats["recipes"]["english-only"]["examples"] == 8


def test_plan_tiny_and_paper(tiny_model_dir, capsys):
    assert main(["plan", "--profile", "tiny", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["totals"]["runs"] == 16 and plan["totals"]["models_trained"] == 14 and plan["data_read"]
    assert {r["run"] for r in plan["runs"]} >= {"lora-multilingual-s42", "full-downsampled-s42", "lora-monolingual-ru-s42"}
    # Seeds multiply the grid; English-only still shares the English monolingual model per seed.
    assert main(["plan", "--profile", "tiny", "--json", "-s", "grid.seeds", "[1, 2, 3]"]) == 0
    plan3 = json.loads(capsys.readouterr().out)
    assert plan3["totals"]["runs"] == 48 and plan3["totals"]["models_trained"] == 42 and plan3["totals"]["seeds"] == 3
    # The paper's test prompts carry no reference answers to score by likelihood.
    out = run_cli("plan", "--profile", "paper", "-s", "eval.likelihood", "false", env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "gpu hours" in out.stdout and "bloom-7b1" in out.stdout and "estimates" in out.stdout
    # Offline, the paper's cells come from the grid's description (design.cells: the recipes' own rules).
    assert "full-english-only-s42" in out.stdout and "(the same model as monolingual-en" in out.stdout
    assert "total: 180 runs (1 seeds), 170 models trained" in out.stdout  # 5 models x 2 methods x 18 cells


def test_run_rejects_unknown_parameters():
    from polyalpaca.book import split_parameters

    assert split_parameters([("profile", "tiny"), ("lora.epochs", 2)]) == {"profile": "tiny", "overrides": {"lora.epochs": 2}}
    with pytest.raises(ValueError, match="unknown parameter"):
        split_parameters([("epochs", 2)])


def test_translate_help_is_reachable_with_the_dataclasses_defaults():
    from polyalpaca.llm_client import EndpointConfig

    out = run_cli("translate", "--help")
    assert out.returncode == 0 and "--backend" in out.stdout
    text = " ".join(out.stdout.split())
    assert f"the endpoint's base URL (default: {EndpointConfig().base_url})" in text
    assert f"requests in flight (default: {EndpointConfig().max_concurrency})" in text
    assert "generation limit per field (default: 512)" in text


def test_timings_keep_the_last_and_the_slowest_build(tmp_path):
    from polyalpaca.book import record_timings

    path = tmp_path / "timings.json"
    record_timings(path, {"03_training": 960.0, "01_data": 60.0}, "cpu")
    table = record_timings(path, {"03_training": 6.0, "01_data": 30.0}, "cpu")
    row = next(line for line in table.splitlines() if line.startswith("| 03_training"))
    assert table.startswith("Profile `cpu`") and row == "| 03_training | 0.1 | 16.0 |"
    assert "| 02_translation | not run | not run |" in table
    # Another profile's builds are recorded apart: a quick class build is not the default's time.
    other = record_timings(path, {"03_training": 120.0}, "class")
    assert "| 03_training | 2.0 | 2.0 |" in other and "| 01_data | not run | not run |" in other
    again = record_timings(path, {}, "cpu")
    assert "| 03_training | 0.1 | 16.0 |" in again
