"""What a profile will cost (``polyalpaca.planning``): the plan and its time scaled to the machine."""
import pytest

from polyalpaca.cli import main

RATES = {"estimate.generation_tokens_per_second": 80.0, "estimate.likelihood_tokens_per_second": 300.0,
         "estimate.likelihood_scored_tokens_per_second": 140.0, "estimate.model_load_s": 8.0,
         "estimate.run_overhead_s": 10.0, "estimate.fixed_minutes": 1.0, "estimate.reference_gflops": 40.0}


def test_plan_scales_its_times_to_the_machine_speed_now(tiny_model_dir, tmp_path, capsys):
    from polyalpaca.config import load_profile
    from polyalpaca.grid import Experiment
    from polyalpaca.planning import machine_speed, plan_table

    exp = Experiment(load_profile("tiny", RATES), tmp_path)
    then = plan_table(exp)
    assert then["reference_gflops"] == 40.0 and "speed" not in then
    half = plan_table(exp, 20.0)  # a machine half as fast as when the rates were measured
    assert half["speed"] == {"gflops_now": 20.0, "gflops_then": 40.0, "factor": 2.0}
    assert half["totals"]["book_minutes"] == pytest.approx(2 * then["totals"]["book_minutes"], rel=0.02)
    assert half["evaluation"]["likelihood"] == pytest.approx(2 * then["evaluation"]["likelihood"], abs=1)
    assert half["runs"][0]["cpu_minutes"] == pytest.approx(2 * then["runs"][0]["cpu_minutes"], abs=0.01)
    assert 0 < machine_speed(0.2) < 10_000
    sets = sum((["-s", k, str(v)] for k, v in RATES.items()), [])
    assert main(["plan", "--profile", "tiny", "--artefacts", str(tmp_path), *sets]) == 0
    assert "--measure-speed scales the times" in capsys.readouterr().out
    assert main(["plan", "--profile", "tiny", "--artefacts", str(tmp_path), "--measure-speed", *sets]) == 0
    assert "scaled to this machine now:" in capsys.readouterr().out
    unrated = Experiment(load_profile("tiny", {**RATES, "estimate.reference_gflops": 0.0}), tmp_path)
    plain = plan_table(unrated, 20.0)  # measured, but nothing to compare it with: said, not scaled
    assert plain["speed"] == {"gflops_now": 20.0, "gflops_then": None, "factor": None}
    assert plain["totals"] == plan_table(unrated)["totals"]
    unrated_sets = sets + ["-s", "estimate.reference_gflops", "0.0"]
    assert main(["plan", "--profile", "tiny", "--artefacts", str(tmp_path), "--measure-speed", *unrated_sets]) == 0
    assert "not scaled: this machine measured" in capsys.readouterr().out
