"""Generation speed: our batched generation vs one prompt at a time (as the authors' released
script does), on the same model and prompts, side by side in one run, greedy.

Reports generated tokens per second for both, the speed-up, and whether the outputs are
identical (they should be: batching changes how, not what, is computed).

    python benchmarks/bench_generate.py --model pypi:gemma-3-270m --prompts 32 --batch-size 32
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pypi:gemma-3-270m")
    p.add_argument("--prompts", type=int, default=32, help="number of test prompts (spread over --languages)")
    p.add_argument("--languages", default="en,es,ru,zh")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="benchmarks/results/generate.json")
    args = p.parse_args(argv)

    import torch

    from polyalpaca.data import embedded_test
    from polyalpaca.generate import DecodingConfig, generate_one_at_a_time, generate_texts
    from polyalpaca.models import load_model, load_tokenizer
    from polyalpaca.prompts import load_template

    langs = args.languages.split(",")
    per_lang = -(-args.prompts // len(langs))
    template = load_template()
    prompts = [template.build(t.prompt) for lang in langs for t in embedded_test(lang).items[:per_lang]][:args.prompts]
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    def count(texts):
        return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    generate_texts(model, tokenizer, prompts[:2], decoding)  # warm-up
    start = time.perf_counter()
    batched = generate_texts(model, tokenizer, prompts, decoding)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    single = generate_one_at_a_time(model, tokenizer, prompts, decoding)
    single_s = time.perf_counter() - start
    same = [a == b for a, b in zip(batched, single)]
    summary = {
        "model": args.model, "prompts": len(prompts), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
        "batched_seconds": round(batched_s, 1), "one_at_a_time_seconds": round(single_s, 1),
        "batched_tokens_per_second": round(count(batched) / batched_s, 2),
        "one_at_a_time_tokens_per_second": round(count(single) / single_s, 2),
        "speedup": round((count(batched) / batched_s) / (count(single) / single_s), 2),
        "identical_outputs": sum(same), "different_outputs": len(same) - sum(same),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "differences": [
        {"prompt": p, "batched": a, "one_at_a_time": b} for p, a, b, s in zip(prompts, batched, single, same) if not s]},
        indent=2, ensure_ascii=False))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
