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
    for command in ("book", "run", "plan", "data", "train", "evaluate", "translate", "prepare-model"):
        assert command in text


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
    assert plan["totals"]["runs"] == 12 and plan["totals"]["models_trained"] == 10 and plan["data_read"]
    assert {r["run"] for r in plan["runs"]} >= {"lora-multilingual", "full-downsampled", "lora-monolingual-ru"}
    out = run_cli("plan", "--profile", "paper", env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "gpu hours" in out.stdout and "bloom-7b1" in out.stdout and "estimates" in out.stdout


def test_run_rejects_unknown_parameters():
    from polyalpaca.book import split_parameters

    assert split_parameters([("profile", "tiny"), ("lora.epochs", 2)]) == {"profile": "tiny", "overrides": {"lora.epochs": 2}}
    with pytest.raises(ValueError, match="unknown parameter"):
        split_parameters([("epochs", 2)])


def test_translate_help_is_reachable():
    out = run_cli("translate", "--help")
    assert out.returncode == 0 and "--backend" in out.stdout


def test_timings_keep_the_last_and_the_slowest_build(tmp_path):
    from polyalpaca.book import record_timings

    path = tmp_path / "timings.json"
    record_timings(path, {"03_training": 960.0, "01_data": 60.0})
    table = record_timings(path, {"03_training": 6.0, "01_data": 30.0})
    row = next(line for line in table.splitlines() if line.startswith("| 03_training"))
    assert row == "| 03_training | 0.1 | 16.0 |"
    assert "| 02_translation | not run | not run |" in table
