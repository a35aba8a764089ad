"""What a profile will cost (``polyalpaca.planning``): the plan and its time scaled to the machine,
the disk its models need."""
import pytest

from polyalpaca import planning
from polyalpaca.cli import main
from polyalpaca.config import load_profile

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


def test_model_sizes_for_the_disk_estimate():
    cpu, paper = load_profile("cpu"), load_profile("paper")
    assert planning.model_params_billions(cpu, "pypi:gemma-3-270m") == pytest.approx(0.27)
    assert planning.model_params_billions(paper, "bigscience/bloom-7b1") == 7.07  # the profile's own figure
    assert planning.model_params_billions(cpu, "bigscience/bloom-1b7") == pytest.approx(1.7)
    assert planning.model_params_billions(cpu, "tiny-random-gemma3") is None
    plan = {"runs": [{"model": "gemma-3-270m", "method": "full", "trains_new_model": True},
                     {"model": "gemma-3-270m", "method": "full", "trains_new_model": False},
                     {"model": "gemma-3-270m", "method": "lora", "trains_new_model": True}]}
    assert planning.disk_estimate(cpu, plan) == {"written_gb": 1.1, "kept_gb": 0.0, "checkpoints_gb": 6.5, "unknown_sizes": []}
    keep = load_profile("cpu", {"storage.keep_full_models": True})
    assert planning.disk_estimate(keep, plan)["kept_gb"] == 1.1


def test_a_disk_too_small_for_the_plan_is_named_before_the_run(tiny_model_dir, tmp_path, capsys):
    from polyalpaca.book import warn_if_disk_is_short

    cpu = load_profile("cpu")
    plan = {"runs": [{"model": "gemma-3-270m", "method": "full", "trains_new_model": True}]}
    disk = planning.disk_estimate(cpu, plan, tmp_path / "not" / "made" / "yet")  # measured on its nearest parent
    assert disk["free_gb"] == round(planning.free_gb(tmp_path), 1) > 0
    assert planning.disk_shortfall({**disk, "free_gb": 100.0}) == ""
    short = planning.disk_shortfall({**disk, "free_gb": 2.0})
    assert short.startswith(f"{tmp_path / 'not' / 'made' / 'yet'} is on a disk with 2.0 GB free; ") and "7.6 GB" in short
    assert "WARNING: " + short in planning.format_check(cpu, {"totals": {"runs": 1, "models_trained": 1,
                                                                    "tokens_processed": 0}, "note": ""},
                                                   {**disk, "free_gb": 2.0})
    # the book warns before its chapters when a grid's models need more than the disk has
    huge = load_profile("tiny", {"grid.model_params_billions": {"tiny-random-gemma3": 1e6}})
    assert "GB free" in warn_if_disk_is_short(huge, tmp_path / "art")
    assert "[polyalpaca] warning: " in capsys.readouterr().out
    assert warn_if_disk_is_short(load_profile("tiny"), tmp_path / "art") == ""

