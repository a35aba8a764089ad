"""The experiment: a profile's grid of runs, composed from the pipeline's stages.

Data flows one way: data (``polyalpaca.data``) -> training sets (``polyalpaca.recipes``) ->
trained models (``polyalpaca.train``) -> answers, scores and likelihood scores
(``polyalpaca.evaluate``, with ``generate`` and ``likelihood``) -> verdicts (``polyalpaca.judge``)
-> findings (``polyalpaca.findings``). ``Experiment`` loads the data once, fills the design's cells
(``design.cells``) with their training sets and keys them (``runs``), and wires the stages to the
profile and the artefact store; the stages do the work:

- training: ``train.train_grid_run``, ``train.train_grid``, ``train.model_folder_of`` (a full
  fine-tune's weights not kept are retrained from the recorded settings when a step needs them);
- evaluation: ``evaluate.Evaluation`` (where answers, scores and likelihoods are stored, what a
  run computes, the run itself, the removal of a full fine-tune's weights once its results are
  stored, the table of a run's results);
- judging: ``judge.verdicts_of``, ``judge.judge_stored``.

Each run (base model x method x training set x seed) gets an id derived from everything that
shapes it (model, method settings and seed, the exact training ids, template). A trained model
lives in ``<artefacts>/runs/<train_key>/``, marked finished by ``DONE``; an interrupted run
resumes from its last checkpoint. Answers, scores, likelihoods and judge verdicts are stored per
(trained model, language) under a cache key of everything that produced them
(``polyalpaca.store``): a changed input is recomputed, an unchanged one reused. The public methods
of ``Experiment`` that name a stage's work (``train``, ``evaluate``, ``answers_of``, ``judge_all``,
...) delegate to it, so chapters and exercises read one object.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path

from . import design, store
from .config import Profile, TrainConfig, keyed_settings
from .data import Record, TestPrompt, load_test_prompts, load_training_records
from .design import GridRun
from .evaluate import Evaluation
from .files import atomic_write_json
from .metrics import gated_score
from .paths import artefacts_root
from .prompts import PromptTemplate, load_template
from .recipes import SplitData, TrainingSet, build_all, select_records, split_validation
from .store import Cached, git_revision, key, library_versions, text_digest

# Re-exported: the grid's runs are design.GridRun; the run records' versions and revision are the store's.
__all__ = ["Experiment", "GridRun", "RunNotTrained", "UnknownRun", "git_revision", "library_versions"]

# The stages that load torch, transformers or openai (train, likelihood, models, serving, judge,
# llm_client, translate) and pandas are imported in the methods that run them: planning, SLURM,
# `polyalpaca check` and the book's pages build an Experiment without loading a model.

log = logging.getLogger(__name__)


class UnknownRun(ValueError):
    pass


class RunNotTrained(ValueError):
    pass


class Experiment:
    """A profile's data, grid and artefacts."""

    def __init__(self, profile: Profile, artefacts_dir: str | Path | None = None):
        self.profile = profile
        self.root = Path(artefacts_dir) if artefacts_dir else artefacts_root() / profile.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.template = load_template("alpaca")  # the untuned base model's; each method names its own
        self._pool: SplitData | None = None
        self._splits: dict[int, SplitData] = {}
        self._tests: dict[str, list[TestPrompt]] = {}
        self.skipped: dict[str, int] = {}  # bad records skipped per file (data.skip_bad_records)
        # The evaluation stage, given what only the experiment knows: the test prompts it loaded,
        # the trained models' folders (retrained when not kept), the grid's trained runs.
        self.evaluation = Evaluation(profile, self.root, self.test_prompts, self.model_dir,
                                     lambda: self.runs(include_base=False))

    # --- data ---------------------------------------------------------------------------
    def _note_skipped(self, where: str, skipped: list) -> None:
        if skipped:
            self.skipped[where] = len(skipped)
            log.warning("%s: skipped %d bad records (first: line %s, %s)", where, len(skipped),
                        skipped[0].line, skipped[0].problem)

    def training_records(self, languages: list[str] | None = None) -> dict[str, list[Record]]:
        """Each training language's records (or ``languages``'), every one the source has (the ids
        common to every language are the ones recipes use: the data are parallel)."""
        d = self.profile.data
        out = {}
        for lang in d.train_languages if languages is None else languages:
            res = load_training_records(lang, d.source, hub_english=d.hub_english, hub_pattern=d.hub_pattern,
                                        files_pattern=d.files_pattern, skip_bad=d.skip_bad_records)
            self._note_skipped(f"training data {lang}", res.skipped)
            out[lang] = res.items
        return out

    def pool(self) -> SplitData:
        """``data.validation_size`` ids held out once (seeded by ``data.seed``, the same for every
        training seed, so validation losses compare across seeds) and every other record."""
        if self._pool is None:
            d = self.profile.data
            self._pool = split_validation(self.training_records(), d.validation_size, d.seed)
        return self._pool

    def split(self, seed: int | None = None) -> SplitData:
        """The training sample of one grid seed (default: the first) and the validation set. With
        ``data.train_limit`` each seed draws ``train_limit - validation_size`` ids, stratified by
        task category, the same ids in every language: a seed redraws the data as well as the
        initialisation and order, and the recipes trained with one seed share its sample."""
        seed = self.profile.grid.seeds[0] if seed is None else seed
        if seed not in self._splits:
            d, pool = self.profile.data, self.pool()
            n = d.train_limit - d.validation_size if d.train_limit else None
            split = SplitData(dict(select_records(pool.train, n, seed)), dict(pool.validation), pool.validation_ids)
            mix = self.profile.grid.dose_mix_language
            if mix and mix not in d.train_languages and self.profile.grid.doses_at(seed):
                # The dose chapter's second language, read beside the pool rather than into it (it
                # must not change which ids the training languages use): the same ids as English,
                # for its split dose runs only (recipes.dose_records names any it lacks).
                by_id = {r.id: r for r in self.training_records([mix])[mix]}
                for part in (split.train, split.validation):
                    part[mix] = [by_id[r.id] for r in part["en"] if r.id in by_id]
            self._splits[seed] = split
        return self._splits[seed]

    def test_prompts(self, lang: str) -> list[TestPrompt]:
        if lang not in self._tests:
            d = self.profile.data
            res = load_test_prompts(lang, d.test_source, d.skip_bad_records)
            self._note_skipped(f"test prompts {lang}", res.skipped)
            self._tests[lang] = res.items[:d.test_limit] if d.test_limit else res.items
        return self._tests[lang]

    def seen_languages(self) -> list[str]:
        """Test languages some recipe trains on."""
        return [l for l in self.profile.data.test_languages if l in self.profile.data.train_languages]

    def unseen_languages(self) -> list[str]:
        """Test languages no recipe trains on."""
        return [l for l in self.profile.data.test_languages if l not in self.profile.data.train_languages]

    def training_sets(self, seed: int | None = None) -> list[TrainingSet]:
        """The training sets for one seed (default: the profile's first seed)."""
        d = self.profile.data
        seed = self.profile.grid.seeds[0] if seed is None else seed
        g = self.profile.grid
        return build_all(g.recipes, self.split(seed), d.train_languages, seed, g.doses_at(seed), g.dose_language,
                         g.dose_mix_language)

    def method_settings(self):
        """The training settings of each method of the grid, as a table (settings that do not
        apply to a method, like the LoRA rank of full tuning, are left blank)."""
        import pandas as pd

        table = {}
        for m in self.profile.grid.methods:
            values = dataclasses.asdict(self.profile.train_config(m))
            values.pop("method")
            lora = values.pop("lora")
            if m == "lora":
                values.update({f"lora.{k}": v for k, v in lora.items()})
            table[m] = values
        return pd.DataFrame(table).fillna("").astype(str)

    def decoding(self, method: str):
        """How ``method``'s models answer (``design.decoding``)."""
        return design.decoding(self.profile, method)

    def train_template(self, method: str) -> PromptTemplate:
        """The template ``method`` trains with (``design.train_template``)."""
        return design.train_template(self.profile, method)

    def decoding_template(self, method: str) -> PromptTemplate:
        """The template the test prompts are asked with (``design.decoding_template``)."""
        return design.decoding_template(self.profile, method)

    @staticmethod
    def method_data(ts: TrainingSet, cfg: TrainConfig) -> TrainingSet:
        """The training set as ``cfg`` trains on it: with its held-out records when the method uses
        no validation (``use_validation = false``), else with at most ``validation_limit`` of them
        (a sample seeded by the training seed)."""
        if not cfg.use_validation:
            return dataclasses.replace(ts, train=ts.train + ts.validation, validation=[])
        if 0 < cfg.validation_limit < len(ts.validation):
            chosen = random.Random(f"validation-{ts.seed}").sample(ts.validation, cfg.validation_limit)
            return dataclasses.replace(ts, validation=chosen)
        return ts

    def decoding_settings(self):
        import pandas as pd

        return pd.DataFrame({m: dataclasses.asdict(self.decoding(m))
                             for m in ["base", *self.profile.grid.methods]}).astype(str)

    # --- the grid -----------------------------------------------------------------------
    def runs(self, include_base: bool | None = None) -> list[GridRun]:
        """The grid's runs (``design.cells``), each filled with its seed's training set and keyed by
        everything that shapes its trained model."""
        p = self.profile
        out: list[GridRun] = []
        sets: dict[tuple, dict[str, TrainingSet]] = {}
        for cell in design.cells(p, include_base):
            short = cell.short_model
            if cell.method == design.BASE:
                out.append(GridRun(f"{short}-base", cell.model, cell.method, cell.recipe, cell.name, [],
                                   list(cell.eval_languages), 0, 0, 0.0, 0))
                continue
            cfg = dataclasses.replace(p.train_config(cell.method), seed=cell.seed)
            if (cell.method, cell.seed) not in sets:
                sets[cell.method, cell.seed] = {t.name: self.method_data(t, cfg) for t in self.training_sets(cell.seed)}
            ts = sets[cell.method, cell.seed][cell.name]
            digest = key({"model": cell.model, "method": cell.method, "train": keyed_settings(cfg),
                          "ids": [(r.lang, r.id) for r in ts.train],
                          "val": [(r.lang, r.id) for r in ts.validation],
                          "texts": text_digest(t for r in ts.train + ts.validation
                                               for t in (r.instruction, r.input, r.output)),
                          "template": dataclasses.asdict(self.train_template(cell.method))})
            out.append(GridRun(f"{short}-{cell.method}-{ts.name}-s{cell.seed}-{digest}", cell.model, cell.method,
                               ts.recipe, ts.name, ts.languages, list(cell.eval_languages), len(ts.train),
                               len(ts.validation), ts.budget_units, cfg.epochs, cell.seed, ts,
                               train_key=f"{short}-{cell.method}-s{cell.seed}-{digest}"))
        return out

    def find_runs(self, name: str) -> list[GridRun]:
        """Runs named ``name``: a label (``lora-multilingual-s42``), a label without seed
        (``lora-multilingual``: every seed), ``base`` or a run id."""
        runs = self.runs(include_base=True)
        found = [r for r in runs if name in (r.run_id, r.label)
                 or (r.method != "base" and name == f"{r.method}-{r.name}")]
        if not found:
            labels = sorted({f"{r.method}-{r.name}" if r.method != "base" else "base" for r in runs})
            seeds = ", ".join(str(s) for s in self.profile.grid.seeds)
            raise UnknownRun(f"no run {name!r} in profile {self.profile.name}. Runs: {', '.join(labels)} "
                             f"(add -s<seed> for one seed; seeds: {seeds})")
        return found

    def run_dir(self, run: GridRun) -> Path:
        """Where the run's model is trained and kept (shared by runs with identical training)."""
        return store.run_folder(self.root, run.model_key)

    def is_trained(self, run: GridRun) -> bool:
        return run.method == "base" or store.is_done(self.run_dir(run))

    def train_result(self, run: GridRun) -> dict | None:
        """The run's recorded training result (losses, steps, time; ``train.TrainResult``), None
        while it is not trained (the base model has none)."""
        return None if run.method == "base" else store.read_train_result(self.run_dir(run))

    # --- training (polyalpaca.train) -------------------------------------------------------
    def train(self, run: GridRun) -> dict:
        """Train one run unless it is done; returns its recorded result (``train.train_grid_run``)."""
        from .train import train_grid_run

        return train_grid_run(self.profile, self.root, run)

    def train_all(self) -> list[dict]:
        """Train every run of the grid (finished ones are reused), reporting progress."""
        from .train import train_grid

        return train_grid(self.profile, self.root, self.runs(include_base=False))

    def model_dir(self, run: GridRun) -> Path:
        """The folder of a trained run's model, retrained from its recorded settings when it was
        not kept (``train.model_folder_of``)."""
        from .train import model_folder_of

        self._require_trained(run)
        return model_folder_of(self.profile, self.root, run)

    def _require_trained(self, run: GridRun) -> None:
        if not self.is_trained(run):
            raise RunNotTrained(
                f"run {run.label} is not trained yet (no {store.done_marker(self.run_dir(run))}). Train it first: "
                f"`polyalpaca train --profile {self.profile.name} --run {run.label}`, or execute the training "
                f"chapter (`polyalpaca run training --profile {self.profile.name}`).")

    # --- evaluation (polyalpaca.evaluate's Evaluation: keys, answers, scores, likelihoods) ----------
    def evaluate(self, run: GridRun) -> dict:
        """Answer, score and likelihood-score every test language of a trained ``run``
        (``evaluate.Evaluation.evaluate``); returns what was computed."""
        self._require_trained(run)
        return self.evaluation.evaluate(run)

    def evaluate_all(self) -> None:
        """Evaluate every trained run (the base model included), reporting progress."""
        self.evaluation.evaluate_all([r for r in self.runs() if self.is_trained(r)])

    def release_model(self, run: GridRun) -> bool:
        """Remove a full fine-tune's weights once its results are stored (``Evaluation.release_model``)."""
        return self.evaluation.release_model(run)

    def answers_of(self, run: GridRun, lang: str) -> Cached:
        return self.evaluation.answers_of(run, lang)

    def scores_of(self, run: GridRun, lang: str, answers: Cached) -> Cached:
        return self.evaluation.scores_of(run, lang, answers)

    def likelihood_of(self, run: GridRun, lang: str) -> Cached | None:
        return self.evaluation.likelihood_of(run, lang)

    def likelihood_pairs(self, lang: str) -> list[tuple[str, str, str]]:
        return self.evaluation.likelihood_pairs(lang)

    def english_references(self) -> list[TestPrompt]:
        return self.evaluation.english_references()

    def gate_candidates(self) -> tuple[str, ...] | None:
        return self.evaluation.gate_candidates()

    def generates(self, run: GridRun, lang: str) -> bool:
        return self.evaluation.generates(run, lang)

    def run_answers(self, run: GridRun):
        """The stored answers of one run, with their scores, likelihoods and verdicts, as a table."""
        return self.evaluation.run_answers(run)

    # --- the judge (polyalpaca.judge) -------------------------------------------------------------
    def verdicts_of(self, run: GridRun, lang: str, answers: Cached) -> Cached | None:
        """Where the judge's verdicts on ``answers`` are stored (None without a judge)."""
        from .judge import verdicts_of

        return verdicts_of(self.profile.eval.judge, self.root, run.model_key, lang, answers)

    def judge_all(self, client=None, progress: bool = False) -> dict:
        """Rate every stored answer with the configured judge (``judge.judge_stored``)."""
        from .judge import judge_stored

        return judge_stored(self.profile.eval.judge, self.root, self.evaluation.stored_answers(self.runs()),
                            self.test_prompts, client, progress)

    # --- the translation study -----------------------------------------------------------
    def translation_study(self) -> dict:
        """The translation chapter's study (``polyalpaca.translate.translation_study``)."""
        from .translate import translation_study

        return translation_study(self.profile.translation, self.root)

    # --- records ------------------------------------------------------------------------
    def write_manifest(self) -> Path:
        path = self.root / "manifest.json"
        atomic_write_json(path, {"profile": self.profile.to_dict(), "versions": library_versions(),
                                 "git": git_revision(), "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return path

    def answers_frame(self):
        """Every scored answer of every evaluated run, with the run's recipe, method, seed and model."""
        import pandas as pd

        frames = []
        for run in self.runs():
            frame = self.run_answers(run)
            if frame.empty:
                continue
            frames.append(frame.assign(run=run.label, recipe=run.recipe, method=run.method, seed=run.seed,
                                       model=design.model_short_name(run.model), name=run.name,
                                       seen=frame["lang"].isin(self.profile.data.train_languages)))
        if not frames:
            return pd.DataFrame()
        out = pd.concat(frames, ignore_index=True)
        for column in ("judge", "judge_status"):
            if column not in out:
                out[column] = None

        out["gated_judge"] = [None if pd.isna(j) else gated_score(int(j), bool(g)) for j, g in zip(out["judge"], out["gate"])]
        return out

