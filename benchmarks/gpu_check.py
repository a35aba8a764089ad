"""The GPU training paths, checked in one short run: bf16 on one GPU, DDP and FSDP through
``accelerate launch`` with the shipped configs, for LoRA and full tuning, on the tiny random Gemma 3
(a few optimizer steps each). Prints a pass/fail table; ``--out`` also writes it as JSON.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--only ddp-full]

Each check trains the tiny profile's multilingual run through ``polyalpaca train`` (24 training and
24 validation examples, 8 per optimizer step, 3 steps, bf16) in a fresh artefacts folder, and
passes when the command succeeds, the run is marked done once with finite losses, ``run.json``
states the expected number of processes, and the saved model loads (a full model as a
transformers folder, a LoRA run as an adapter on its base) and answers one prompt on the GPU.
DDP needs two GPUs (skipped on one); FSDP runs on as many as there are, up to two.

Without CUDA it says so and exits 0: there is nothing to check on this machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "polyalpaca" / "accelerate"
SETTINGS = {"data.train_limit": "16", "data.validation_size": "8"}  # 3 languages x 8 examples each side


@dataclass
class Check:
    name: str
    config: str
    method: str
    processes: int
    min_gpus: int


@dataclass
class Outcome:
    name: str
    processes: int
    status: str  # pass | FAIL | skipped
    seconds: float = 0.0
    steps: int = 0
    final_loss: float | None = None
    note: str = ""


CHECKS = [
    Check("single-gpu-bf16-lora", "single_gpu.yaml", "lora", 1, 1),
    Check("single-gpu-bf16-full", "single_gpu.yaml", "full", 1, 1),
    Check("ddp-lora", "ddp.yaml", "lora", 2, 2),
    Check("ddp-full", "ddp.yaml", "full", 2, 2),
    Check("fsdp-full", "fsdp.yaml", "full", 2, 1),
    Check("fsdp-lora", "fsdp.yaml", "lora", 2, 1),
]


def verify(run_dir: Path, method: str, processes: int) -> tuple[int, float, str]:
    """(steps, final loss, problem or "") for a finished run folder."""
    import torch

    from polyalpaca import store

    if not store.is_done(run_dir):
        return 0, math.nan, "no DONE marker"
    result, record = store.read_train_result(run_dir), store.read_run_record(run_dir)
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    final = losses[-1] if losses else math.nan
    if record.get("processes") != processes:
        return result["steps"], final, f"run.json says {record.get('processes')} processes, expected {processes}"
    if not losses or not all(math.isfinite(x) for x in losses):
        return result["steps"], final, f"losses not finite: {losses}"
    from polyalpaca.models import TINY_GEMMA, load_tokenizer
    from polyalpaca.train import load_trained

    model = load_trained(run_dir / "model", TINY_GEMMA).to("cuda", torch.bfloat16)
    tokenizer = load_tokenizer(TINY_GEMMA)
    ids = tokenizer("### Instruction:\nSay hi.\n\n### Response:\n", return_tensors="pt").to("cuda")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    if out.shape[1] <= ids["input_ids"].shape[1]:
        return result["steps"], final, "the trained model generated nothing"
    return result["steps"], final, ""


def first_error(output: str) -> str:
    """The line that says why a launch failed: polyalpaca's error, else the first exception line
    of a worker (torchrun's own summary comes after and says only that a child failed)."""
    lines = [line.strip() for line in output.splitlines()]
    for marker in ("polyalpaca: error:", "Error: ", "Error:", "Exception: "):
        found = [line for line in lines if marker in line and not line.startswith("torch.distributed.elastic")]
        if found:
            return found[0][:300]
    return " | ".join(line for line in lines if line)[-300:]


def run_check(check: Check, gpus: int, workdir: Path, timeout_s: int) -> Outcome:
    if gpus < check.min_gpus:
        return Outcome(check.name, check.processes, "skipped", note=f"needs {check.min_gpus} GPUs, found {gpus}")
    processes = min(check.processes, gpus)
    artefacts = workdir / check.name
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / check.config),
           "--num_processes", str(processes), "-m", "polyalpaca", "train", "--profile", "tiny",
           "--run", f"{check.method}-multilingual", "--artefacts", str(artefacts),
           "-s", f"{check.method}.precision", "bf16", "-s", f"{check.method}.effective_batch", "8"]
    for key, value in SETTINGS.items():
        cmd += ["-s", key, value]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    except subprocess.TimeoutExpired:
        return Outcome(check.name, processes, "FAIL", round(time.perf_counter() - start, 1),
                       note=f"no result within {timeout_s} s")
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        (workdir / f"{check.name}.log").write_text(proc.stdout + proc.stderr)
        return Outcome(check.name, processes, "FAIL", seconds, note=first_error(proc.stdout + proc.stderr))
    run_dirs = sorted((artefacts / "runs").glob("*"))
    if len(run_dirs) != 1:
        return Outcome(check.name, processes, "FAIL", seconds, note=f"{len(run_dirs)} run folders")
    try:
        steps, final, problem = verify(run_dirs[0], check.method, processes)
    except Exception as exc:  # a model that does not load is this check's failure, not the script's
        steps, final, problem = 0, math.nan, f"{type(exc).__name__}: {exc}"[:300]
    return Outcome(check.name, processes, "FAIL" if problem else "pass", seconds, steps,
                   None if math.isnan(final) else round(final, 4), problem)


def format_table(outcomes: list[Outcome], device: str) -> str:
    lines = [f"GPU checks on {device}", f"{'check':<22}{'procs':>6}  {'status':<8}{'seconds':>8}{'steps':>6}"
             f"{'final loss':>12}  note"]
    for o in outcomes:
        loss = "" if o.final_loss is None else f"{o.final_loss:.4f}"
        lines.append(f"{o.name:<22}{o.processes:>6}  {o.status:<8}{o.seconds:>8.1f}{o.steps:>6}{loss:>12}  {o.note}")
    passed = sum(o.status == "pass" for o in outcomes)
    lines.append(f"{passed} passed, {sum(o.status == 'FAIL' for o in outcomes)} failed, "
                 f"{sum(o.status == 'skipped' for o in outcomes)} skipped")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="", help="also write the table as JSON here")
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks (names as in the table)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per check")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("No CUDA device here: the GPU checks (bf16 single GPU, DDP, FSDP) are skipped. "
              "Run this script on a machine with NVIDIA GPUs.")
        return 0
    gpus = torch.cuda.device_count()
    device = f"{gpus} x {torch.cuda.get_device_name(0)}"
    from polyalpaca.models import tiny_gemma_folder

    tiny_gemma_folder()  # built once, before the launches share it
    checks = [c for c in CHECKS if args.only is None or c.name in args.only]
    outcomes = []
    workdir = Path(tempfile.mkdtemp(prefix="polyalpaca-gpu-check-"))
    for check in checks:
        outcomes.append(run_check(check, gpus, workdir, args.timeout))
        print(f"{check.name}: {outcomes[-1].status} ({outcomes[-1].seconds:.0f} s) {outcomes[-1].note}", flush=True)
    print(format_table(outcomes, device))
    if any(o.status == "FAIL" for o in outcomes):
        print(f"run folders and the failed launches' logs (CHECK.log) are kept in {workdir}")
    else:
        shutil.rmtree(workdir)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": device, "torch": torch.__version__,
                                              "checks": [asdict(o) for o in outcomes]}, indent=2) + "\n")
    return 0 if all(o.status != "FAIL" for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
