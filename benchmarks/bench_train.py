"""Training speed: plain TRL ``SFTTrainer`` vs PolyAlpaca's ``FastSFTTrainer`` on the same batches.

Variants: ``baseline`` (TRL's SFTTrainer as it comes: padded batches, its chunked LM head over
every position, per-step entropy and accuracy) and ``fast`` (our exact path).
Each variant runs in its own subprocess (so peak memory is its own) on the same model, data,
seed and batch order, with learning rate 0 so the weights stay identical and the per-step
losses must agree exactly up to floating-point noise. Reports real (non-padding) tokens per
second over the timed steps (the first step is warm-up), peak resident memory, and the losses.

A shared machine's speed drifts by tens of percent between minutes, so the variants run in
``--rounds`` interleaved rounds (baseline, fast, then the reverse order, ...): each
round's speed-up compares runs made minutes apart, and the summary gives the median of the
per-round speed-ups together with their range.

    python benchmarks/bench_train.py --model pypi:gemma-3-270m --method lora --steps 8 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_variant(args) -> dict:
    import torch
    from transformers import TrainerCallback

    from polyalpaca import train as T
    from polyalpaca.config import TrainConfig
    from polyalpaca.data import embedded_train
    from polyalpaca.models import load_model, load_tokenizer
    from polyalpaca.prompts import load_template

    torch.manual_seed(0)
    langs = args.languages.split(",")
    per_lang = args.batch_size * (args.steps + 1) // len(langs) + 1
    if args.data_file:
        from polyalpaca.data import read_alpaca_file
        records = read_alpaca_file(args.data_file, langs[0]).items
    else:
        records = [r for lang in langs for r in embedded_train(lang).items[:per_lang]]
    records = records[: args.batch_size * (args.steps + 1)]
    cfg = TrainConfig(method=args.method, epochs=1, learning_rate=0.0, batch_size=args.batch_size,
                      gradient_accumulation=1, warmup_steps=0, max_length=args.max_length,
                      loss_on="all" if args.method == "lora" else "response", eval_every_epoch=False,
                      gradient_checkpointing="off", precision="fp32")
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    template = load_template()
    dataset = T.tokenize_records(records, tokenizer, template, cfg.max_length, cfg.loss_on)
    fast = args.variant.startswith("fast")
    sft_args = T.build_sft_config(cfg, Path(args.workdir) / args.variant, has_validation=False, precision="fp32",
                                  checkpointing=False, padding_free=fast)
    sft_args.save_strategy = "no"
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    cls = T.FastSFTTrainer if fast else T.SFTTrainer
    trainer = cls(model=model, args=sft_args, train_dataset=dataset, processing_class=tokenizer,
                  peft_config=T.build_peft_config(cfg), callbacks=[Timer()])
    # The exact batches, in the trainer's own order, to count real tokens per step.
    batches = [sum(len(dataset[i]["input_ids"]) for i in idx)
               for idx in _batch_indices(trainer, args.batch_size)]
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    timed = times[1:]
    tokens = sum(batches[1:len(times)])
    return {
        "variant": args.variant, "steps": len(times), "step_seconds": [round(t, 3) for t in times],
        "timed_tokens": tokens, "tokens_per_second": tokens / sum(timed),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "losses": losses,
    }


def _batch_indices(trainer, batch_size):
    sampler = trainer._get_train_sampler(trainer.train_dataset)
    order = list(iter(sampler))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def summarise(rounds: list[dict], variants: list[str]) -> dict:
    """Median tokens/s per variant, and each variant's speed-up over the baseline of the same round."""
    base = [r["baseline"] for r in rounds]
    summary = {
        "baseline": {
            "tokens_per_second": round(statistics.median(b["tokens_per_second"] for b in base), 2),
            "tokens_per_second_per_round": [round(b["tokens_per_second"], 2) for b in base],
            "peak_rss_gb": round(max(b["peak_rss_gb"] for b in base), 2),
            "losses": base[0]["losses"],
        }
    }
    for name in variants[1:]:
        runs = [r[name] for r in rounds]
        ratios = [v["tokens_per_second"] / b["tokens_per_second"] for v, b in zip(runs, base)]
        loss_diff = max(abs(x - y) for v, b in zip(runs, base) for x, y in zip(v["losses"], b["losses"]))
        summary[name] = {
            "tokens_per_second": round(statistics.median(v["tokens_per_second"] for v in runs), 2),
            "tokens_per_second_per_round": [round(v["tokens_per_second"], 2) for v in runs],
            "speedup": round(statistics.median(ratios), 2),
            "speedup_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "peak_rss_gb": round(max(v["peak_rss_gb"] for v in runs), 2),
            "max_abs_loss_difference": loss_diff,
            "losses": runs[0]["losses"],
        }
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pypi:gemma-3-270m")
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--steps", type=int, default=8, help="training steps per variant (the first is warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every variant")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--languages", default="en,ru,zh,es")
    p.add_argument("--data-file", help="an Alpaca JSON/JSONL file to use instead of the embedded data")
    p.add_argument("--workdir", default="/tmp/polyalpaca-bench-train")
    p.add_argument("--out", help="result file (default: benchmarks/results/train_<method>.json)")
    p.add_argument("--variants", default="baseline,fast", help="baseline (plain TRL), fast (our exact path)")
    p.add_argument("--variant", choices=["baseline", "fast"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0
    passthrough = list(sys.argv[1:] if argv is None else argv)
    variants = args.variants.split(",")
    if variants[0] != "baseline":
        p.error("--variants must start with baseline: every speed-up is relative to it")
    rounds: list[dict] = []
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        results = {}
        for variant in order:
            cmd = [sys.executable, __file__, *passthrough, "--variant", variant]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.stderr.write(out.stderr[-4000:])
                return out.returncode
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {r + 1}/{args.rounds} {variant}: {results[variant]['tokens_per_second']:.1f} tokens/s",
                  file=sys.stderr, flush=True)
        rounds.append(results)
    summary = summarise(rounds, variants)
    summary.update({"model": args.model, "method": args.method, "batch_size": args.batch_size,
                    "steps": args.steps, "rounds": args.rounds, "max_length": args.max_length,
                    "cpu_threads": __import__("torch").get_num_threads()})
    out_file = Path(args.out or f"benchmarks/results/train_{args.method}.json")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
