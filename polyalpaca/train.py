"""Supervised fine-tuning with TRL: LoRA (through PEFT) or full-parameter, one grid run at a time.

LoRA and full tuning differ only by whether a PEFT config is passed. ``FastSFTTrainer`` computes
the same loss as TRL's ``SFTTrainer`` with less work:

- padding-free batches: the examples of a batch are concatenated into one row with restarting
  ``position_ids`` (attention stays within each example), so no compute is spent on padding.
  Only for models that keep the examples of such a row apart
  (``packed_attention.keeps_examples_apart``); BLOOM is trained on padded batches, with the rest
  of the fast path;
- logits only where labels count: the LM head (262k-way for Gemma) runs only at positions whose
  next token is a training target, so masked prompts cost no LM-head work, and it runs in token
  chunks whose gradients are formed at once, so the full logits never exist and nothing is
  recomputed in the backward pass;
- attention per example inside the packed row (``polyalpaca.packed_attention``) instead of one
  masked attention over the whole row;
- no per-step entropy / token-accuracy metrics over the full vocabulary.

``benchmarks/bench_train.py`` measures it against plain TRL on the same batches.

The training stage of a grid (``train_grid_run``, ``train_grid``, ``model_folder_of``) takes a
profile, its artefacts folder and the ``design.GridRun`` values the experiment made, and keeps one
run folder per trained model (``polyalpaca.store``).

Data parallelism comes from the launcher: ``accelerate launch`` (or ``torchrun``) starts one
process per device and ``transformers`` shards the batches. ``TrainConfig.effective_batch`` fixes
the examples per optimizer step across all processes, so gradient accumulation follows from the
number of processes. Every process trains; only the main one writes a run's records
(``run.json``, ``train_ids.jsonl``, ``train_result.json``, ``DONE``), and the model is saved the
way the trainer saves it (the main process writes, sharded setups gather first).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from . import design, packed_attention, store
from .config import Profile, TrainConfig
from .data import Record
from .design import GridRun, gradient_accumulation_steps
from .files import atomic_write_json, folder_lock
from .fused_loss import add_fast_lm_loss
from .progress import Progress, report
from .models import load_model, load_tokenizer, load_trained  # noqa: F401  (load_trained: re-exported)
from .prompts import PromptTemplate, tokenize_example  # noqa: F401  (tokenize_example: re-exported)

log = logging.getLogger(__name__)


# --- data -------------------------------------------------------------------------------

def tokenize_records(records: list[Record], tokenizer, template: PromptTemplate, max_length: int,
                     loss_on: str) -> Dataset:
    """A pre-tokenized dataset (``input_ids``, ``labels``): TRL starts on it without re-processing."""
    rows = [tokenize_example(r, tokenizer, template, max_length, loss_on) for r in records]
    return Dataset.from_list(rows)


# --- trainer ----------------------------------------------------------------------------

class FastSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss computes logits only at positions with a label, chunk by chunk,
    with the gradients formed in the same pass (``polyalpaca.fused_loss``).

    The loss is identical to TRL's (sum of token negative log-likelihoods over the label count,
    ``num_items_in_batch`` under gradient accumulation). The forward goes through the wrapped
    model, so DDP, FSDP, DeepSpeed and PEFT behave as usual."""

    def __init__(self, *args, **kwargs):
        model = kwargs.get("model")
        if model is not None and not isinstance(model, str):
            add_fast_lm_loss(model)  # before PEFT wraps it, like TRL's own fused head
            if packed_attention.keeps_examples_apart(model) and model.config._attn_implementation in ("sdpa", "eager"):
                model.set_attn_implementation(packed_attention.NAME)  # per-example attention in packed rows
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs, fast_labels=labels, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if model.training:
            self._total_train_tokens += int(inputs["input_ids"].numel())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss


class EpochLines(TrainerCallback):
    """One printed line per validation and one at the end, instead of transformers' printer of
    every logging step (hundreds of lines in an executed chapter). Every step's loss is still
    kept in the run's ``log_history``, which the chapters plot."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:  # one line per launch, not one per node
            return
        if "eval_loss" in logs and not state.global_step:  # the untuned model (_validation_loss_before)
            print(f"  before training: validation loss {logs['eval_loss']:.4f}", flush=True)
        elif "eval_loss" in logs:
            print(f"  epoch {logs.get('epoch', 0):g}: validation loss {logs['eval_loss']:.4f}", flush=True)
        elif "train_loss" in logs:
            print(f"  trained {state.global_step} steps in {logs.get('train_runtime', 0):.0f} s, "
                  f"mean training loss {logs['train_loss']:.4f}", flush=True)


class _WallClock(TrainerCallback):
    """Records wall time per logging step, written with the losses."""

    def __init__(self):
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs["wall_s"] = round(time.time() - self.start, 2)


# --- configuration ----------------------------------------------------------------------

# The variables launchers set: torchrun and accelerate launch (WORLD_SIZE, RANK, LOCAL_RANK),
# Intel MPI / MPICH (PMI_*), Open MPI (OMPI_COMM_WORLD_*), MVAPICH (MV2_COMM_WORLD_*).
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_LOCAL_RANK_VARS = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value.strip():
            return int(value)
    return default


@dataclass(frozen=True)
class Processes:
    """The processes this training is launched as (read from the launcher's environment, before
    any process group exists). A plain ``python -m polyalpaca train`` is one process, rank 0."""

    count: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_processes() -> Processes:
    return Processes(count=_env_int(_WORLD_SIZE_VARS, 1), rank=_env_int(_RANK_VARS, 0),
                     local_rank=_env_int(_LOCAL_RANK_VARS, 0))


def hardware() -> dict:
    """What the training will run on, for automatic precision and checkpointing choices."""
    cuda = torch.cuda.is_available()
    return {
        "cuda": cuda,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "world_size": launched_processes().count,
    }


def resolve_precision(cfg: TrainConfig, hw: dict) -> str:
    if cfg.precision == "auto":
        return "bf16" if hw["bf16"] else "fp32"
    if cfg.precision == "bf16" and not hw["bf16"]:
        raise ValueError("precision = 'bf16' needs a GPU with bf16 support; use 'fp32' or 'auto' here")
    return cfg.precision


def resolve_checkpointing(cfg: TrainConfig, hw: dict, n_params: int) -> bool:
    if cfg.gradient_checkpointing == "auto":
        # Recomputing activations trades time for memory: worth it on GPUs for models past ~1B.
        return bool(hw["cuda"] and n_params > 1_000_000_000)
    return cfg.gradient_checkpointing == "on"


def build_sft_config(cfg: TrainConfig, output_dir: Path, *, has_validation: bool, precision: str,
                     checkpointing: bool, padding_free: bool, processes: int = 1) -> SFTConfig:
    """The one place that maps our ``TrainConfig`` onto TRL's ``SFTConfig``; ``processes`` is the
    number of data-parallel processes (for the gradient accumulation of ``effective_batch``)."""
    warmup = cfg.warmup_ratio if cfg.warmup_ratio > 0 else cfg.warmup_steps
    evaluate = has_validation and cfg.eval_every_epoch
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(cfg, processes),
        warmup_steps=warmup,
        lr_scheduler_type=cfg.scheduler,
        weight_decay=cfg.weight_decay,
        max_length=None if padding_free else cfg.max_length,  # our tokenizer already cuts at max_length
        padding_free=padding_free,
        completion_only_loss=False,  # the labels already carry the prompt mask
        dataset_kwargs={"skip_prepare_dataset": True},
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),  # several CPU processes then use gloo
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient (LoRA and full)
        gradient_checkpointing=checkpointing,
        eval_strategy="epoch" if evaluate else "no",
        # A run of one epoch or less has nothing to choose between and nothing to resume from
        # within it: no epoch checkpoint (for full tuning, weights plus AdamW moments: 12 bytes
        # per parameter written for nothing). Interrupted, such a run restarts cleanly.
        save_strategy="epoch" if cfg.epochs > 1 else "no",
        save_total_limit=2,
        load_best_model_at_end=evaluate and cfg.best_by_validation and cfg.epochs > 1,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def build_peft_config(cfg: TrainConfig):
    if cfg.method != "lora":
        return None

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), bias="none", task_type="CAUSAL_LM")


# --- running one training job -------------------------------------------------------------

@dataclass
class TrainResult:
    run_dir: str
    model_dir: str
    method: str
    train_examples: int
    train_tokens: int
    steps: int
    seconds: float
    best_eval_loss: float | None
    log_history: list
    eval_loss_before: float | None = None  # the validation loss of the untuned model: did training teach?
    processes: int = 1
    gradient_accumulation: int = 1


def last_checkpoint(output_dir: Path) -> str | None:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in checkpoints if (c / "trainer_state.json").exists()]
    return str(complete[-1]) if complete else None


def _validation_loss_before(trainer, ckpt_dir: Path) -> float:
    """The untuned model's validation loss, measured once and kept beside the checkpoints (a
    resumed run reads it instead of measuring a half-trained model)."""
    path = ckpt_dir / "validation_before.json"
    if path.exists():
        return json.loads(path.read_text())["eval_loss"]
    # Measured without touching the random state training then draws from (dropout, order), so a
    # run trains the same whether or not it measured this first (a resumed run reads it instead).
    py_state, np_state = random.getstate(), np.random.get_state()
    logged = len(trainer.state.log_history)
    with torch.random.fork_rng(devices=[]):
        loss = float(trainer.evaluate()["eval_loss"])
    del trainer.state.log_history[logged:]  # kept in train_result.json as eval_loss_before, not as an epoch
    random.setstate(py_state)
    np.random.set_state(np_state)
    if trainer.is_world_process_zero():
        atomic_write_json(path, {"eval_loss": loss})
    return loss


def train(model_spec: str, train_records: list[Record], validation_records: list[Record], cfg: TrainConfig,
          template: PromptTemplate, run_dir: str | Path, fast: bool | None = None,
          callbacks: list | None = None) -> TrainResult:
    """Fine-tune ``model_spec`` and save the result in ``run_dir/model``.

    Run it in every process of a data-parallel launch: all train, the main process writes
    ``train_result.json`` (no tokenizer copy: the run's is its base model's). A run interrupted
    after an epoch resumes from its last checkpoint in ``run_dir/checkpoints``."""
    run_dir = Path(run_dir)
    ckpt_dir = store.checkpoint_folder(run_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    fast = cfg.fast_path if fast is None else fast
    processes = launched_processes()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_spec)
    model = load_model(model_spec)
    hw = hardware()
    precision = resolve_precision(cfg, hw)
    checkpointing = resolve_checkpointing(cfg, hw, sum(p.numel() for p in model.parameters()))
    train_ds = tokenize_records(train_records, tokenizer, template, cfg.max_length, cfg.loss_on)
    val_ds = (tokenize_records(validation_records, tokenizer, template, cfg.max_length, cfg.loss_on)
              if validation_records else None)
    packed = fast and packed_attention.keeps_examples_apart(model)
    if fast and not packed:
        log.warning("%s.fast_path: %s cannot keep the examples of a packed row apart (its attention does not "
                    "take the row's boundaries); it is trained on padded batches, with the same loss",
                    cfg.method, type(model).__name__)
    args = build_sft_config(cfg, ckpt_dir, has_validation=val_ds is not None, precision=precision,
                            checkpointing=checkpointing, padding_free=packed, processes=processes.count)
    if args.world_size != processes.count:  # the launcher's environment and the process group disagree
        raise RuntimeError(f"the launcher announced {processes.count} processes but training runs in "
                           f"{args.world_size}; launch with accelerate launch or torchrun (see book/rerun.md)")
    trainer_cls = FastSFTTrainer if fast else SFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          processing_class=tokenizer, peft_config=build_peft_config(cfg),
                          callbacks=[_WallClock(), EpochLines(), *(callbacks or [])])
    trainer.remove_callback(PrinterCallback)
    start = time.time()
    # One process without gradient accumulation only: measured first through the trainer, the
    # evaluation shifted where an accumulating or data-parallel run's optimizer steps fall (the
    # tests compare such runs step by step), so those record no value here.
    measure_before = val_ds is not None and args.world_size == 1 and args.gradient_accumulation_steps == 1
    before = _validation_loss_before(trainer, ckpt_dir) if measure_before else None
    trainer.train(resume_from_checkpoint=last_checkpoint(ckpt_dir))
    seconds = time.time() - start
    model_dir = store.model_folder(run_dir)
    trainer.processing_class = None  # no tokenizer copy in the run: it is the base model's (models.load_tokenizer)
    trainer.save_model(str(model_dir))  # every process calls it: sharded models are gathered first
    best = trainer.state.best_metric
    result = TrainResult(
        run_dir=str(run_dir), model_dir=str(model_dir), method=cfg.method,
        train_examples=len(train_records), train_tokens=int(sum(len(x) for x in train_ds["input_ids"])),
        steps=trainer.state.global_step, seconds=round(seconds, 1),
        best_eval_loss=None if best is None or math.isnan(best) else float(best),
        log_history=trainer.state.log_history, processes=args.world_size,
        eval_loss_before=before,
        gradient_accumulation=args.gradient_accumulation_steps,
    )
    if trainer.is_world_process_zero():
        store.write_train_result(run_dir, asdict(result))
    trainer.accelerator.wait_for_everyone()  # the model is complete on disk before any process returns
    return result


def _launch_record(cfg: TrainConfig, processes: Processes, run_dir: Path) -> dict:
    """What ``run.json`` says about how the run is launched, with the launches so far: a run
    resumed from a checkpoint lists each launch and the checkpoint it resumed from."""
    accumulation = gradient_accumulation_steps(cfg, processes.count)
    per_step = cfg.batch_size * accumulation * processes.count
    previous = store.read_run_record(run_dir) or {}
    resumed_from = last_checkpoint(store.checkpoint_folder(run_dir))
    if resumed_from and previous.get("examples_per_optimizer_step", per_step) != per_step:
        raise ValueError(
            f"{run_dir} was started with {previous['examples_per_optimizer_step']} examples per optimizer step "
            f"({previous.get('processes')} processes); resuming with {processes.count} processes makes "
            f"{per_step}. Launch it as before, or set {cfg.method}.effective_batch so that the number of "
            "processes does not change the batch.")
    launches = previous.get("launches", []) if resumed_from else []
    launches.append({"processes": processes.count, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "resumed_from": Path(resumed_from).name if resumed_from else None})
    return {"processes": processes.count, "gradient_accumulation": accumulation,
            "examples_per_optimizer_step": per_step, "launches": launches}


def train_run(run_dir: str | Path, model_spec: str, train_records: list[Record],
              validation_records: list[Record], cfg: TrainConfig, template: PromptTemplate, record: dict) -> dict:
    """Train one grid run into ``run_dir`` unless it is marked done; returns its recorded result.

    Call it in every process of a launch. The main process writes ``run.json`` (``record`` and
    the launch: number of processes, gradient accumulation, examples per optimizer step, and
    every launch of a resumed run), ``train_ids.jsonl``, ``train_result.json`` and, once the
    model is saved, the ``DONE`` marker; resumable checkpoints are removed once the run is done.
    The main process holds the run folder's lock (``files.folder_lock``) while it writes: a second
    process training the same run waits, then finds it done."""
    run_dir = Path(run_dir)
    if store.is_done(run_dir):
        return store.read_train_result(run_dir)
    processes = launched_processes()
    if not processes.is_main:  # the main process holds the run folder's lock for the launch
        return asdict(train(model_spec, train_records, validation_records, cfg, template, run_dir))
    with folder_lock(run_dir, what="training it"):
        if store.is_done(run_dir):  # trained by the process we waited for
            return store.read_train_result(run_dir)
        launch = _launch_record(cfg, processes, run_dir)  # checks a resumed run keeps its batch
        store.write_run_record(run_dir, {**record, **launch})
        store.write_train_ids(run_dir, [{"lang": r.lang, "id": r.id} for r in train_records])
        result = train(model_spec, train_records, validation_records, cfg, template, run_dir)
        store.mark_done(run_dir)
        # The finished model is in run_dir/model; resumable checkpoints (optimizer states included)
        # are only needed while the run is unfinished.
        shutil.rmtree(store.checkpoint_folder(run_dir), ignore_errors=True)
    return asdict(result)


# --- the training stage of a grid ---------------------------------------------------------------

def train_grid_run(profile: Profile, root: str | Path, run: GridRun) -> dict:
    """Train one grid run into its run folder under the artefacts folder ``root`` unless it is
    done; returns its recorded result (``{}`` for the untuned base model). ``run.json`` records the
    run, its settings, the libraries, the code's revision and the training set's counts."""
    if run.method == design.BASE:
        return {}
    cfg = design.training_settings(profile, run.method, run.seed)
    record = {**run.summary(), "train_config": asdict(cfg), "seed": run.seed,
              "versions": store.library_versions(), "git": store.git_revision(),
              "counts": run.training_set.counts()}
    return train_run(store.run_folder(root, run.model_key), run.model, run.training_set.train,
                     run.training_set.validation, cfg, design.train_template(profile, run.method), record)


def train_grid(profile: Profile, root: str | Path, runs: list[GridRun]) -> list[dict]:
    """Train every run of ``runs`` (finished ones, and runs sharing a model trained before them,
    are reused), reporting progress; returns their recorded results in order."""
    progress, results, done_keys = Progress(len(runs), "training"), [], set()
    for run in runs:
        cached = store.is_done(store.run_folder(root, run.model_key)) or run.model_key in done_keys
        result = train_grid_run(profile, root, run)
        done_keys.add(run.model_key)
        results.append(result)
        note = "stored" if cached else f"{result.get('seconds', 0):.0f} s"
        progress.step(f"{run.label} ({note})", cached=cached)
    return results


def recorded_losses(log_history: list[dict]) -> list[tuple]:
    """The recorded losses of a training run (step, training loss, validation loss), without times."""
    return [(h.get("step"), h.get("loss"), h.get("eval_loss")) for h in log_history]


def model_folder_of(profile: Profile, root: str | Path, run: GridRun) -> Path:
    """The folder of a trained run's model. A finished run whose model was not kept
    (``storage.keep_full_models``) or was removed (``polyalpaca clean --models-only``) is first
    retrained from its recorded settings: training is seeded, so the weights are the same, and
    the losses are checked against the recorded ones (a difference is reported)."""
    run_dir = store.run_folder(root, run.model_key)
    folder = store.model_folder(run_dir)
    if folder.exists():
        return folder
    recorded = store.read_train_result(run_dir)
    with folder_lock(run_dir, what="retraining its model"):
        if folder.exists():  # retrained by the process we waited for
            return folder
        report(f"[polyalpaca] {run.label}: its model was not kept (storage.keep_full_models = false, or "
               f"removed by polyalpaca clean): retraining it from its recorded settings (seeded: the same "
               f"weights; {recorded['seconds']:.0f} s when it was first trained)")
        scratch = run_dir / "retrain.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        result = train(run.model, run.training_set.train, run.training_set.validation,
                       design.training_settings(profile, run.method, run.seed),
                       design.train_template(profile, run.method), scratch)
        store.model_folder(scratch).rename(folder)
        shutil.rmtree(scratch)
    if recorded_losses(result.log_history) != recorded_losses(recorded["log_history"]):
        report(f"[polyalpaca] warning: {run.label}: the retrained model's losses differ from the recorded "
               "ones (training is not bit-reproducible on this machine); its stored results are kept")
    return folder
