"""How far `polyalpaca plan` is from the real stages on this machine now, and the rates that would
close the gap: a small grid of the profile trained and evaluated by the book's own code, side by
side with the plan's prediction for that grid at the machine's speed measured in the same minute.

    python benchmarks/calibrate_plan.py --profile cpu

The small grid is the profile with one seed and the recipes given by --recipes (by default the
monolingual and multilingual recipes: three LoRA models of two sizes, and the base model), in a
scratch artefacts folder. It prints, and writes to --out:

- the machine's speed (``planning.machine_speed``, GFLOP/s) before and after;
- training and evaluation seconds, measured and as planned, and their ratio;
- the profile's [estimate] rates scaled by those ratios and expressed at its ``reference_gflops``:
  the values to put in the profile so that the plan matches this machine (training rates by the
  training ratio; answering, likelihood and loading rates by the evaluation ratio).

Run it on a quiet machine, in the hour of the build it is meant to predict; it takes about as
long as four models' training and evaluation (3-4 minutes on the CPU default).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--recipes", default="monolingual,multilingual", help="recipes of the small grid")
    p.add_argument("--workdir", help="scratch artefacts folder (default: a temporary folder)")
    p.add_argument("--out", default="benchmarks/results/calibrate_plan.json")
    args = p.parse_args(argv)

    from polyalpaca.config import load_profile
    from polyalpaca.grid import Experiment
    from polyalpaca.planning import at_speed, machine_speed, plan_table

    profile = load_profile(args.profile)
    if not (profile.estimate.reference_gflops and profile.estimate.generation_tokens_per_second):
        p.error(f"profile {args.profile} has no measured rates to calibrate ([estimate] reference_gflops and "
                "generation_tokens_per_second): the plan does not predict its book time")
    small = load_profile(args.profile, {"grid.seeds": profile.grid.seeds[:1], "grid.recipes": args.recipes.split(",")})
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="polyalpaca-calibrate-"))
    speed_before = machine_speed()
    exp = Experiment(small, workdir)
    plan = plan_table(exp, speed_before)
    planned_train = plan["totals"]["cpu_minutes"] * 60
    planned_eval = sum(plan["evaluation"][k] for k in ("load", "generation", "likelihood"))

    start = time.perf_counter()
    exp.train_all()
    measured_train = time.perf_counter() - start
    start = time.perf_counter()
    exp.evaluate_all()
    measured_eval = time.perf_counter() - start
    speed_after = machine_speed()

    f_train, f_eval = measured_train / planned_train, measured_eval / planned_eval
    e = profile.estimate
    # Rates divided by a ratio > 1 (the stage took longer than planned), fixed times multiplied.
    calibrated = dataclasses.replace(
        e, run_overhead_s=round(e.run_overhead_s * f_train, 2),
        full_tokens_per_second=round(e.full_tokens_per_second / f_train, 1),
        generation_tokens_per_second=round(e.generation_tokens_per_second / f_eval, 1),
        likelihood_tokens_per_second=round(e.likelihood_tokens_per_second / f_eval, 1),
        likelihood_scored_tokens_per_second=round(e.likelihood_scored_tokens_per_second / f_eval, 1),
        model_load_s=round(e.model_load_s * f_eval, 2))
    # The speeds before and after differ when the machine drifts: the mean is the one used for the
    # rates (at_speed scaled the plan by the speed before).
    drift = (speed_before + speed_after) / 2 / speed_before
    result = {
        "profile": args.profile, "small_grid": {"seeds": small.grid.seeds, "recipes": small.grid.recipes,
                                                "models_trained": plan["totals"]["models_trained"],
                                                "models_evaluated": plan["evaluation"]["models"]},
        "gflops_before": round(speed_before, 1), "gflops_after": round(speed_after, 1),
        "training_s": {"measured": round(measured_train, 1), "planned": round(planned_train, 1),
                       "ratio": round(f_train, 3)},
        "evaluation_s": {"measured": round(measured_eval, 1), "planned": round(planned_eval, 1),
                         "ratio": round(f_eval, 3)},
        "speed_drift": round(drift, 3),
        "calibrated_estimate": {**dataclasses.asdict(calibrated),
                                "tokens_per_second_estimate": round(profile.tokens_per_second_estimate / f_train, 1)},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # The calibrated profile's plan of the small grid, as a check (it should match the measured times).
    check = plan_table(Experiment(at_speed(dataclasses.replace(
        small, estimate=calibrated, tokens_per_second_estimate=result["calibrated_estimate"]["tokens_per_second_estimate"]),
        speed_before), workdir))
    result["check_planned_s"] = {"training": round(check["totals"]["cpu_minutes"] * 60, 1),
                                 "evaluation": sum(check["evaluation"][k] for k in ("load", "generation", "likelihood"))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
