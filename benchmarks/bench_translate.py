"""Translation throughput: concurrent vs one request at a time, then a rerun from the cache.

Runs against the local OpenAI test double (tests/openai_double.py) with an injected latency per
request (200 ms by default), so the numbers measure the client, not a real service:

    .venv/bin/python benchmarks/bench_translate.py --out benchmarks/results/translate.json

Three phases on the same records, in one run: (1) ``max_concurrency=1`` with an empty cache,
(2) ``max_concurrency=N`` with another empty cache, (3) phase 2 again on its now full cache,
which must send no request at all. Prints a summary and writes it as JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test double lives with the tests
sys.path.insert(0, str(ROOT))

from openai_double import OpenAIDouble  # noqa: E402
from polyalpaca.llm_client import ChatClient, EndpointConfig  # noqa: E402
from polyalpaca.config import TranslationSettings  # noqa: E402
from polyalpaca.translate import COMMAND_PROMPT_VERSION, ApiBackend, translate_records  # noqa: E402

KEY_ENV = "POLYALPACA_BENCH_API_KEY"


def bench_records(n: int) -> list[dict[str, str]]:
    """``n`` distinct Alpaca-like records (words only, so no two texts collapse into one job)."""
    subjects = ["garden", "river", "library", "mountain", "kitchen", "harbour", "forest", "market"]
    things = ["morning light", "old bicycle", "quiet evening", "winter coat", "paper boat", "red door"]
    pairs = list(itertools.product(subjects, things))
    if n > len(pairs):
        raise SystemExit(f"--records must be at most {len(pairs)}")
    return [{"instruction": f"Describe the {s} and the {t} in a few careful sentences.",
             "input": "" if i % 2 else f"The {s} was crowded while the {t} waited nearby.",
             "output": f"The {s} looked peaceful, and the {t} made everything feel calm and warm."}
            for i, (s, t) in enumerate(pairs[:n])]


def run_phase(double: OpenAIDouble, records: list[dict[str, str]], languages: list[str], concurrency: int,
              cache: Path) -> dict:
    """Translate once; returns wall time, requests the double received, and the client's ledger."""
    endpoint = EndpointConfig(base_url=double.base_url, model="bench-double", api_key_env=KEY_ENV,
                              max_concurrency=concurrency, timeout_s=30)
    before = double.request_count()
    start = time.perf_counter()
    with ChatClient(endpoint, cache, progress=False) as client:
        out = translate_records(records, TranslationSettings(languages=languages, prompt_version=COMMAND_PROMPT_VERSION),
                                ApiBackend(client))
        ledger = client.ledger.to_dict()
    seconds = time.perf_counter() - start
    failed = sum(not item.ok for item in out)
    if failed:
        raise SystemExit(f"{failed} records failed to translate: the benchmark is invalid")
    return {"concurrency": concurrency, "seconds": round(seconds, 3),
            "requests_received": double.request_count() - before, "ledger": ledger}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/translate.json"),
                        help="JSON file to write the results to (default: benchmarks/results/translate.json)")
    parser.add_argument("--records", type=int, default=12, help="records to translate (default: 12)")
    parser.add_argument("--languages", default="fr", help="comma-separated target languages (default: fr)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds added to each reply (default: 0.2)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight when concurrent (default: 8)")
    args = parser.parse_args(argv)

    os.environ.setdefault(KEY_ENV, "bench-not-a-secret")
    records = bench_records(args.records)
    languages = [code.strip() for code in args.languages.split(",") if code.strip()]
    with OpenAIDouble(latency_s=args.latency) as double, tempfile.TemporaryDirectory() as tmp:
        sequential = run_phase(double, records, languages, 1, Path(tmp) / "sequential")
        concurrent = run_phase(double, records, languages, args.concurrency, Path(tmp) / "concurrent")
        cached = run_phase(double, records, languages, args.concurrency, Path(tmp) / "concurrent")
    result = {
        "records": len(records), "languages": languages, "latency_s": args.latency,
        "jobs": sequential["requests_received"],
        "one_at_a_time": sequential, "concurrent": concurrent, "cached_rerun": cached,
        "speedup_concurrent_vs_one_at_a_time": round(sequential["seconds"] / concurrent["seconds"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{result['jobs']} translation requests, {args.latency * 1000:.0f} ms latency each")
    print(f"one at a time : {sequential['seconds']:7.2f} s")
    print(f"concurrency {args.concurrency:<2}: {concurrent['seconds']:7.2f} s  "
          f"(x{result['speedup_concurrent_vs_one_at_a_time']} faster)")
    print(f"cached rerun  : {cached['seconds']:7.2f} s, requests sent = {cached['requests_received']}, "
          f"cache hits = {cached['ledger']['cache_hits']}")
    print(f"wrote {args.out}")
    if cached["requests_received"] != 0:
        raise SystemExit("the cached rerun sent requests")
    return result


if __name__ == "__main__":
    main()
