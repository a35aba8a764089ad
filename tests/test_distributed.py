"""Data-parallel training for real: ``accelerate launch`` starts two CPU processes (gloo) that train
a tiny-profile grid run through ``polyalpaca train``, for full tuning and for LoRA.

What is compared with one process, and why it is equal: the profile declares the effective batch
(8 examples per optimizer step here), so one process accumulates 2 micro-batches of 4 and two
processes take 1 micro-batch of 4 each. The sharded sampler deals the single-process batches out
in turn (process 0 gets batches 0, 2, ...; process 1 gets 1, 3, ...), so every optimizer step sees
the same 8 examples in both set-ups; each process's loss is its label-token sum over the global
label count times the number of processes, and DDP averages the gradients, so the update is the
same sum. The sizes are chosen so no batch is short (24 training and 24 validation examples,
multiples of 8): accelerate pads a short last batch on the second process with repeated examples,
which would change that step's (and the validation) loss. LoRA dropout is set to 0: the processes
draw their own dropout masks, which cannot match one process's draws. Under these conditions every
training loss, every validation loss and the final weights agree to float32 rounding (measured:
bit for bit); the tests allow a relative 1e-6 on losses and 1e-6 absolute on weights.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from polyalpaca.config import TrainConfig, load_profile
from polyalpaca.grid import Experiment
from polyalpaca.design import gradient_accumulation_steps
from polyalpaca.train import launched_processes

MULTI_CPU = Path(__file__).resolve().parents[1] / "polyalpaca" / "accelerate" / "multi_cpu.yaml"
# Strings, as the command line passes them: the in-process run reads them the same way, so both
# runs get the same run id.
OVERRIDES = {"data.train_limit": "16", "data.validation_size": "8", "lora.effective_batch": "8",
             "full.effective_batch": "8", "lora.lora.dropout": "0.0", "lora.max_length": "64", "full.max_length": "64"}
LAUNCH_TIMEOUT_S = 300


def launch(artefacts: Path, run: str, overrides: dict[str, str], log: Path) -> subprocess.Popen:
    """``accelerate launch`` with the shipped multi-CPU config: two processes train ``run``."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTI_CPU),
           "--num_processes", "2", "-m", "polyalpaca", "train", "--profile", "tiny", "--run", run,
           "--artefacts", str(artefacts)]
    for key, value in overrides.items():
        cmd += ["-s", key, value]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, text=True)


def finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process it started (torchrun puts its workers in sessions
    of their own, so a process-group kill would miss them), like a node that fails."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in [*family, psutil.Process(proc.pid)]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


def single_process_run(artefacts: Path, run_name: str, overrides: dict[str, str]) -> Path:
    """The same grid run trained here, in one process; returns its run folder."""
    exp = Experiment(load_profile("tiny", overrides), artefacts)
    (run,) = [r for r in exp.runs(include_base=False) if f"{r.method}-{r.name}" == run_name]
    exp.train(run)
    return exp.run_dir(run)


def history(run_dir: Path) -> tuple[list, list]:
    log = json.loads((run_dir / "train_result.json").read_text())["log_history"]
    return ([(h["step"], h["loss"]) for h in log if "loss" in h],
            [(h["step"], h["eval_loss"]) for h in log if "eval_loss" in h])


def assert_same_training(one: Path, two: Path, weights_file: str) -> None:
    train_1, val_1 = history(one)
    train_2, val_2 = history(two)
    assert [s for s, _ in train_2] == [s for s, _ in train_1] and val_2 and [s for s, _ in val_2] == [s for s, _ in val_1]
    for (_, a), (_, b) in zip(train_1 + val_1, train_2 + val_2):
        assert b == pytest.approx(a, rel=1e-6, abs=0)
    w1, w2 = load_file(one / "model" / weights_file), load_file(two / "model" / weights_file)
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-6


def assert_written_once(run_dir: Path, output: str, epochs: int) -> None:
    """One process reported and wrote the records (both trained: DDP needs both at every step)."""
    assert (run_dir / "DONE").read_text().count("\n") == 1
    assert not (run_dir / "checkpoints").exists()
    assert not list(run_dir.rglob(".*.tmp"))  # no write left half done
    epoch_lines = [l for l in output.splitlines() if l.strip().startswith("epoch ") and "validation loss" in l]
    assert len(epoch_lines) == epochs  # the progress lines come from the main process only
    assert output.count("before training: validation loss") <= 1
    assert output.count("mean training loss") == 1


@pytest.mark.slow
def test_two_processes_full_tuning_equals_one(tmp_path, tiny_model_dir):
    log = tmp_path / "launch.log"
    output = finish(launch(tmp_path / "two", "full-multilingual", OVERRIDES, log), log)
    one = single_process_run(tmp_path / "one", "full-multilingual", OVERRIDES)
    two = tmp_path / "two" / "runs" / one.name  # the same run id: the number of processes is not part of it
    record_1, record_2 = json.loads((one / "run.json").read_text()), json.loads((two / "run.json").read_text())
    assert (record_1["processes"], record_1["gradient_accumulation"]) == (1, 2)
    assert (record_2["processes"], record_2["gradient_accumulation"]) == (2, 1)
    assert record_1["examples_per_optimizer_step"] == record_2["examples_per_optimizer_step"] == 8
    assert json.loads((two / "train_result.json").read_text())["processes"] == 2
    assert (two / "train_ids.jsonl").read_text() == (one / "train_ids.jsonl").read_text()
    assert_written_once(two, output, epochs=1)
    assert_same_training(one, two, "model.safetensors")
    base, trained = load_file(tiny_model_dir / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert max((trained[k] - base[k]).abs().max().item() for k in base) > 1e-4  # the weights did move


@pytest.mark.slow
def test_killed_two_process_lora_run_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    overrides = {**OVERRIDES, "lora.epochs": "2"}  # 3 optimizer steps per epoch, a checkpoint after each
    log = tmp_path / "first.log"
    proc = launch(tmp_path / "two", "lora-multilingual", overrides, log)
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    saved = []
    while not saved and proc.poll() is None and time.monotonic() < deadline:
        saved = list((tmp_path / "two" / "runs").glob("*/checkpoints/checkpoint-3/trainer_state.json"))
        time.sleep(0.05)
    assert saved, "no checkpoint appeared:\n" + log.read_text()[-3000:]
    kill_tree(proc)
    run_dir = saved[0].parents[2]
    assert not (run_dir / "DONE").exists(), "the run finished before it could be killed"
    assert not (run_dir / "model").exists()

    log = tmp_path / "second.log"
    output = finish(launch(tmp_path / "two", "lora-multilingual", overrides, log), log)
    record = json.loads((run_dir / "run.json").read_text())
    assert [(l["processes"], l["resumed_from"]) for l in record["launches"]] == [(2, None), (2, "checkpoint-3")]
    assert "epoch 1:" not in output and output.count("epoch 2: validation loss") == 1  # epoch 1 was not redone
    assert_written_once(run_dir, output, epochs=1)
    one = single_process_run(tmp_path / "one", "lora-multilingual", overrides)
    assert one.name == run_dir.name
    assert [s for s, _ in history(run_dir)[0]] == [1, 2, 3, 4, 5, 6]
    assert_same_training(one, run_dir, "adapter_model.safetensors")
    adapter = load_file(run_dir / "model" / "adapter_model.safetensors")
    assert all(adapter[k].abs().max() > 0 for k in adapter if "lora_B" in k)  # trained away from B = 0


def test_only_the_main_process_writes_the_run_records(tmp_path, monkeypatch, template):
    """``train_run`` in a process of rank 1 trains but writes nothing; rank 0 writes every record."""
    import polyalpaca.train as T
    from polyalpaca.data import Record

    calls = []

    def fake_train(model_spec, train_records, validation_records, cfg, template, run_dir, **kwargs):
        calls.append(os.environ["RANK"])
        return T.TrainResult(str(run_dir), str(Path(run_dir) / "model"), cfg.method, len(train_records), 0, 1,
                             0.0, None, [], processes=2)

    monkeypatch.setattr(T, "train", fake_train)
    records = [Record("r1", "en", "Say hi.", "", "Hi.")]
    cfg = TrainConfig(batch_size=4, effective_batch=8)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    T.train_run(tmp_path / "run", "model", records, [], cfg, template, {"name": "x"})
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    monkeypatch.setenv("RANK", "0")
    T.train_run(tmp_path / "run", "model", records, [], cfg, template, {"name": "x"})
    assert calls == ["1", "0"]
    written = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("."))  # .lock: the writer's lock
    assert written == ["DONE", "run.json", "train_ids.jsonl"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (record["name"], record["processes"], record["gradient_accumulation"]) == ("x", 2, 1)


def test_gradient_accumulation_follows_the_number_of_processes(monkeypatch):
    cfg = TrainConfig(method="full", batch_size=4, gradient_accumulation=5, effective_batch=128)
    assert [gradient_accumulation_steps(cfg, n) for n in (1, 2, 8, 32)] == [32, 16, 4, 1]
    with pytest.raises(ValueError, match=r"full.effective_batch = 128 is not a multiple of full.batch_size \(4\) x 3"):
        gradient_accumulation_steps(cfg, 3)
    assert gradient_accumulation_steps(TrainConfig(gradient_accumulation=5), 8) == 5  # no effective batch: as given
    paper = load_profile("paper")
    assert paper.lora.effective_batch == paper.full.effective_batch == 128
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "3")
    assert (launched_processes().count, launched_processes().is_main) == (8, False)
