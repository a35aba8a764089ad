"""A short learning-rate check on the real model: one grid run trained at a few learning rates per
method (seeded, the profile's other settings), with what each did to the validation loss and to
the scores the findings rest on. The book shows the result (``teaching.learning_rate_check``).

    python benchmarks/lr_check.py --profile cpu --run downsampled --seed 42 \
        --lora 5e-4,1e-3,3e-3 --full 1e-5,2e-5,5e-5

Every run is an ordinary grid run stored under its key in ``--artefacts`` (a re-run reuses it).
Writes ``benchmarks/results/lr_check_<profile>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from polyalpaca import findings as F
from polyalpaca.config import load_profile
from polyalpaca.grid import Experiment, git_revision

RESULTS = Path(__file__).resolve().parent / "results"


def check(profile: str, run: str, seed: int, rates: dict[str, list[float]], artefacts: str) -> list[dict]:
    rows = []
    for method, values in rates.items():
        for lr in values:
            exp = Experiment(load_profile(profile, {f"{method}.learning_rate": lr, "grid.seeds": [seed],
                                                    "grid.methods": [method]}), artefacts)
            target = exp.find_runs(f"{method}-{run}-s{seed}")[0]
            base = exp.find_runs("base")[0]
            result = exp.train(target)
            exp.evaluate(base)
            exp.evaluate(target)
            data = F.with_measures(exp.answers_frame())
            tuned = data[data["run"] == target.label]
            row = {"method": method, "learning rate": lr, "run": target.label, "steps": result.get("steps"),
                   "validation loss before": result.get("eval_loss_before"),
                   "validation loss after": result.get("best_eval_loss")}
            for lang, group in tuned.groupby("lang"):
                row[f"quality gain {lang} (%)"] = round(float(group["quality"].mean()), 2)
            non_en = tuned[tuned["lang"] != "en"]
            row["wrong-language rate (non-English)"] = round(float(non_en["wrong_language"].mean()), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--run", default="downsampled", help="the grid run's name without method and seed")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lora", default="5e-4,1e-3,3e-3", help="LoRA learning rates, comma-separated")
    p.add_argument("--full", default="1e-5,2e-5,5e-5", help="full fine-tuning learning rates, comma-separated")
    p.add_argument("--artefacts", default="/tmp/polyalpaca-lr-check")
    p.add_argument("--out", help="result file (default: benchmarks/results/lr_check_<profile>.json)")
    args = p.parse_args(argv)
    rates = {m: [float(x) for x in v.split(",") if x] for m, v in (("lora", args.lora), ("full", args.full))}
    start = time.time()
    rows = check(args.profile, args.run, args.seed, rates, args.artefacts)
    out = Path(args.out) if args.out else RESULTS / f"lr_check_{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"profile": args.profile, "run": args.run, "seed": args.seed, "git": git_revision(),
                               "minutes": round((time.time() - start) / 60, 1), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
