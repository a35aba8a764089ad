"""Typed configuration: one dataclass per stage, gathered into a ``Profile``.

Profiles live in ``polyalpaca/profiles/NAME.toml`` (``tiny`` for tests, ``cpu`` the offline
default, ``paper`` the paper's scale) or in any TOML file given by path. Every field can be
overridden with dotted keys, e.g. ``{"lora.epochs": 2}`` (``-s lora.epochs 2`` on the command
line). Every value, from the file or from an override, is checked against its field's declared
type when the profile is read; text from the command line is converted where that is
unambiguous ("2" for a whole number, "1e-3" for a number, "true"/"false", JSON lists and tables).
Each field carries its help text (``polyalpaca check --list-settings`` prints them all). Which
values are *allowed*, and how fields must agree with each other, is ``polyalpaca.preflight``'s job.

This module imports nothing heavy: the command line reads it before deciding what to load.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from .data import EMBEDDED_TRAIN_LANGUAGES  # the paper's nine training languages
from .paths import PACKAGE_DIR

# The allowed values of a setting, declared once on its field: the converter reads them (a value
# outside them is a problem of its type, listed with every other), `check --list-settings` shows
# them, and code that loops over them reads them with ``allowed(...)``.
Method = Literal["lora", "full"]
Recipe = Literal["monolingual", "multilingual", "english-only", "downsampled", "dose"]
LossOn = Literal["all", "response"]
# transformers' SchedulerType values (transformers 5.x); tests/test_config.py compares them with
# the installed transformers, which is not imported here because it takes seconds.
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                    "warmup_stable_decay", "greedy"]
Precision = Literal["auto", "fp32", "bf16"]
Switch = Literal["auto", "on", "off"]
DataSource = Literal["embedded", "hub", "files"]
EvalBackend = Literal["local", "server"]
TranslationBackend = Literal["local", "api"]
GateLanguages = Literal["study", "all"]
EnglishAnswers = Literal["every-seed", "first-seed"]


def allowed(kind: Any) -> tuple[str, ...]:
    """The values a ``Literal`` setting type allows, in their declared order."""
    return typing.get_args(kind)

PROFILES_DIR = PACKAGE_DIR / "profiles"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            keyed_at_default: bool = True) -> Any:
    """A dataclass field with its help text. A list or dict default is copied for each instance.

    ``keyed_at_default=False`` (for settings added after results were stored): the setting enters
    cache keys (``keyed_settings``) only when it differs from its default, so the results stored
    before it existed, made with what is now its default, keep their keys."""
    if factory is None and isinstance(default, (list, dict)):
        value = default
        factory = lambda: copy.deepcopy(value)  # noqa: E731
    metadata = {"help": help, "keyed_at_default": keyed_at_default}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def keyed_settings(obj: Any) -> dict:
    """A settings dataclass as the dict that cache keys and run ids are made of: ``dataclasses.asdict``
    without the settings declared ``keyed_at_default=False`` that are at their default."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not f.metadata.get("keyed_at_default", True):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            if value == default:
                continue
        out[f.name] = keyed_settings(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


class SettingsError(ValueError):
    """Every problem found in a profile, one line each, each naming its dotted key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        lines = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(f"the profile has {n} problem{'' if n == 1 else 's'}:{lines}")


@dataclass
class DecodingConfig:
    """How answers are decoded. The paper used 4 beams, 256 new tokens, no_repeat_ngram_size 6
    (and repetition_penalty 1.1 for full fine-tuning); the CPU default decodes greedily."""

    max_new_tokens: int = setting(64, "most tokens generated per answer")
    num_beams: int = setting(1, "beam search width (1 = greedy)")
    no_repeat_ngram_size: int = setting(0, "forbid repeating n-grams of this size (0 = off)")
    repetition_penalty: float = setting(1.0, "penalty on tokens already generated (1.0 = off)")
    batch_size: int = setting(16, "prompts per generate call")
    stop_strings: tuple[str, ...] = setting(("\n### ",), "generation stops at any of these strings")
    template: str = setting("", "prompt template of the questions (polyalpaca/resources/templates/NAME.json); "
                                "'' = the template the method was trained with", keyed_at_default=False)
    skip_special_tokens: bool = setting(True, "drop special tokens such as </s> from the answer; false keeps them "
                                              "(up to the first eos)", keyed_at_default=False)

    def generate_kwargs(self) -> dict:
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=self.num_beams)
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


@dataclass
class DataConfig:
    """Which instruction data and test prompts to use."""

    source: DataSource = setting("embedded", "where the training data come from")
    train_languages: list[str] = setting(list(EMBEDDED_TRAIN_LANGUAGES), "languages of the training data")
    test_languages: list[str] = setting(["en", "es", "ru", "zh", "bg", "bn", "no"], "languages of the test prompts")
    unseen_languages: list[str] = setting(["bn", "no"], "test languages no recipe trains on")
    train_limit: int | None = setting(None, "records per language in use, validation included: each training seed "
                                            "draws train_limit - validation_size training ids (stratified by "
                                            "category); none = all")
    validation_size: int = setting(20, "held-out records per training set (the paper: 1000)")
    test_source: str = setting("embedded", "test prompts: embedded, paper-url or a folder with test_{lang}.jsonl")
    test_limit: int | None = setting(None, "test prompts per language; none = all")
    hub_english: str = setting("yahma/alpaca-cleaned", "Hub data set of the English records (source = hub)")
    hub_pattern: str = setting("pinzhenchen/alpaca-cleaned-{lang}", "Hub data set of the other languages (source = hub)")
    files_pattern: str = setting("", "file of each language when source = files, e.g. data/alpaca_{lang}.json")
    skip_bad_records: bool = setting(False, "skip (and report) malformed records instead of stopping")
    seed: int = setting(42, "seed of the validation split and of the notebooks' random state")


@dataclass
class LoraSettings:
    """The LoRA adapter (used by the lora method)."""

    r: int = setting(8, "rank of the adapter matrices")
    alpha: int = setting(16, "scaling numerator (the update is scaled by alpha / r)")
    dropout: float = setting(0.05, "dropout on the adapter's input")
    target_modules: list[str] = setting(["q_proj", "k_proj", "v_proj"], "module names that get an adapter")


@dataclass
class TrainConfig:
    """One fine-tuning method. ``loss_on`` is "all" (prompt and response, the paper's LoRA) or
    "response" (prompt masked, the paper's full fine-tuning)."""

    method: Method = setting("lora", "the method (set by the table's name)")
    epochs: float = setting(5, "passes over the training set")
    learning_rate: float = setting(3e-4, "peak learning rate")
    batch_size: int = setting(8, "examples per device per step")
    gradient_accumulation: int = setting(16, "steps accumulated per optimizer step (when effective_batch is 0)")
    effective_batch: int = setting(0, "examples per optimizer step across all processes (the paper: 128); "
                                      "0 = use gradient_accumulation")
    warmup_steps: int = setting(100, "learning-rate warm-up steps (when warmup_ratio is 0)")
    warmup_ratio: float = setting(0.0, "warm-up as a share of all steps")
    scheduler: Scheduler = setting("linear", "learning-rate schedule (a transformers SchedulerType)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_length: int = setting(512, "tokens per example (longer ones are cut)")
    loss_on: LossOn = setting("all", "what the loss counts: all (prompt and response) or response (prompt masked)")
    lora: LoraSettings = setting(factory=LoraSettings, help="the LoRA adapter")
    template: str = setting("alpaca", "prompt template of training and likelihood scoring "
                                      "(polyalpaca/resources/templates/NAME.json)", keyed_at_default=False)
    use_validation: bool = setting(True, "hold out the validation records (data.validation_size ids); false = "
                                         "train on them too, with no validation loss, and keep the final model",
                                   keyed_at_default=False)
    validation_limit: int = setting(0, "validation records per run: a seeded sample of the run's held-out "
                                       "records (0 = all of them)", keyed_at_default=False)
    eval_every_epoch: bool = setting(True, "validation loss after every epoch")
    best_by_validation: bool = setting(True, "keep the epoch with the lowest validation loss")
    fast_path: bool = setting(True, "our speed-ups (logits only where labels count, no padding): same loss")
    precision: Precision = setting("auto", "numeric precision of training (auto: bf16 where the GPU has it)")
    gradient_checkpointing: Switch = setting("auto", "recompute activations to save memory (auto: on GPUs, models past 1B)")
    logging_steps: int = setting(1, "steps between recorded training losses")
    seed: int = setting(42, "training seed (the grid's seeds replace it per run)")


@dataclass
class GridConfig:
    """The experiment grid: base models x methods x recipes (monolingual = one run per language)."""

    models: list[str] = setting(["pypi:gemma-3-270m"], "base model specs (Hub ids, folders, pypi:gemma-3-270m)")
    methods: list[Method] = setting(["lora", "full"], "fine-tuning methods")
    recipes: list[Recipe] = setting(["monolingual", "multilingual", "english-only", "downsampled"],
                                 "tuning recipes (polyalpaca.recipes)")
    doses: list[int] = setting([], "the dose recipe's doses: records of the English set replaced by the same "
                                   "records in grid.dose_language (polyalpaca.dose)", keyed_at_default=False)
    dose_language: str = setting("", "the dose recipe's other language ('' = the first non-English training "
                                     "language)", keyed_at_default=False)
    dose_seeds: int = setting(0, "train the dose runs for the first N of grid.seeds only (0 = every seed)",
                              keyed_at_default=False)
    dose_mix_language: str = setting("", "the dose chapter's second axis (one extra language against two): with "
                                         "each dose k, a run whose k replaced records are the dose run's same "
                                         "records, half of them in this language instead of grid.dose_language "
                                         "('' = none; its training data are read beside data.train_languages)",
                                     keyed_at_default=False)
    seeds: list[int] = setting([42], "training seeds: every grid cell is trained once per seed (LoRA "
                                     "initialisation, data order, dropout and the downsampled draw follow it)")
    compute_note: str = setting("", "free text about the compute used, shown in the book")
    records_per_language_estimate: int = setting(0, "for plan estimates when the data cannot be read here")
    tokens_per_example_estimate: int = setting(0, "for plan estimates when the data cannot be read here")
    model_params_billions: dict[str, float] = setting({}, "parameters per model spec, for GPU-hour and disk estimates")

    def doses_at(self, seed: int) -> tuple[int, ...]:
        """The dose recipe's doses trained with ``seed`` (none beyond the first ``dose_seeds`` seeds)."""
        seeds = self.seeds[: self.dose_seeds] if self.dose_seeds else self.seeds
        return tuple(self.doses) if seed in seeds else ()


@dataclass
class Endpoint:
    """An OpenAI-compatible endpoint as a profile names it: where it is, which model, the NAME of the
    environment variable holding its key (never the key) and how many requests are in flight. The
    judge (``eval.judge``), the completions server (``eval.server``) and the translation API
    (``translation``) are each one; ``llm_client.EndpointConfig`` adds the client's retries,
    timeouts and sampling to it."""

    base_url: str = setting("", "the endpoint's base URL, e.g. http://localhost:8000/v1 (empty: no judge; no server)")
    model: str = setting("", "the model's name at the endpoint (empty: no judge; for a server, the grid's model spec)")
    api_key_env: str = setting("OPENAI_API_KEY", "NAME of the environment variable holding the key ('' = none)")
    max_concurrency: int = setting(8, "requests in flight")


@dataclass
class JudgeSettings(Endpoint):
    """An OpenAI-compatible judge (the paper: gpt-3.5-turbo-0613, temperature 0) and its prompt.
    Empty base_url and model = no judge (offline scoring)."""

    prompt_version: str = setting("judge_v1", "prompt file polyalpaca/resources/prompts/NAME.txt")


@dataclass
class TranslationSettings(Endpoint):
    """The translation chapter: translate a sample of our English records and compare with our
    own reference translations. ``backend`` "local" runs ``model`` (a model spec) in-process;
    "api" calls the OpenAI-compatible endpoint (``base_url``, ``model``, key from ``api_key_env``)."""

    model: str = setting("pypi:gemma-3-270m", "local: a model spec; api: the endpoint's model name")
    backend: TranslationBackend = setting("local", "local (a model in this process) or api (an OpenAI-compatible endpoint)")
    languages: list[str] = setting(["es", "ru", "zh"], "target languages (with embedded reference translations)")
    records: int = setting(6, "English records translated")
    prompt_version: str = setting("translate_base_v2", "prompt file polyalpaca/resources/prompts/NAME.txt")
    examples: int = setting(3, "worked examples shown to a base model (the last records, never in the sample)")
    max_new_tokens: int = setting(96, "generation limit per field (backend = local)")
    batch_size: int = setting(8, "prompts per generate call (backend = local)")


@dataclass
class ServerSettings(Endpoint):
    """Generation through an OpenAI-compatible completions server (vLLM, llama.cpp, TGI) instead
    of in-process ``transformers``: ``eval.backend = "server"``. With ``lora_adapters`` each LoRA
    run is requested by its adapter name on one served base model (vLLM multi-LoRA serving)."""

    lora_adapters: bool = setting(False, "request each LoRA run by its adapter name (vLLM multi-LoRA)")


@dataclass
class FindingsConfig:
    """The statistical design of the claims table, declared before any run."""

    alpha: float = setting(0.05, "family-wise error rate of each family of tests, the tuning rows and the claims (Holm)")
    margins: dict[str, float] = setting({"quality": 1.0, "answer_language": 0.05, "robustness": 1.0},
                                        "non-inferiority margin per measure (quality: points of % gain over the "
                                        "base; robustness: nats of log-odds; answer_language: share of answers): "
                                        "A is not worse than B when A - B is above -margin")
    min_seeds: int = setting(3, "fewer seeds than this: the verdict is exploratory and not counted")
    dose_share: float = setting(0.5, "the dose-response chapter's target: the smallest dose reaching this share of "
                                     "the multilingual recipe's gain over English-only (polyalpaca.dose)")


@dataclass
class EstimateConfig:
    """Rates for the time ``polyalpaca plan`` predicts, measured on the machine a profile is sized
    for (the cpu profile: benchmarks and the book's own timing record on the 2-core machine)."""

    run_overhead_s: float = setting(0.0, "seconds per trained model besides its steps: load, set-up, validation, saving")
    full_tokens_per_second: float = setting(0.0, "training throughput of full fine-tuning, when it differs from "
                                                 "tokens_per_second_estimate (every weight and its optimizer state updated)")
    generation_tokens_per_second: float = setting(0.0, "new tokens per second when answering test prompts")
    likelihood_tokens_per_second: float = setting(0.0, "tokens per second through the model's layers when scoring "
                                                       "reference answers (shared prompt tokens counted once)")
    likelihood_scored_tokens_per_second: float = setting(0.0, "reference tokens per second through the "
                                                              "full-vocabulary LM head")
    model_load_s: float = setting(0.0, "seconds to load one trained model for evaluation")
    fixed_minutes: float = setting(0.0, "minutes of the chapters that do not grow with the grid (data, translation, "
                                        "findings) and of the HTML build")
    reference_gflops: float = setting(0.0, "planning.machine_speed() measured in the hour the rates above were "
                                           "measured: `polyalpaca plan --measure-speed` scales every time by the "
                                           "ratio of this to the machine's speed now")


@dataclass
class BookConfig:
    """How the book is executed."""

    chapter_timeout_s: int = setting(3600, "seconds per chapter; a chapter running longer is stopped and named")


@dataclass
class StorageConfig:
    """What the artefacts folder keeps once a run's results are stored."""

    keep_full_models: bool = setting(False, "keep every fully fine-tuned model's weights (4 bytes per parameter "
                                            "each) after its answers and likelihoods are stored; when false they "
                                            "are removed then, and a later step that needs one retrains it from "
                                            "its recorded settings (seeded: the same weights). LoRA adapters are "
                                            "always kept")


@dataclass
class EvalConfig:
    """How the test prompts are answered and scored."""

    decoding: DecodingConfig = setting(factory=DecodingConfig, help="decoding of the answers")
    decoding_full: DecodingConfig | None = setting(None, "decoding for full fine-tuning, when it differs")
    judge: JudgeSettings = setting(factory=JudgeSettings, help="the LLM judge")
    evaluate_base_model: bool = setting(True, "also answer with the untuned base model")
    langid_seed: int = setting(0, "seed of the language detector")
    english_answers: EnglishAnswers = setting("every-seed", "which seeds' models generate answers to English prompts: "
                                                 "every-seed, or first-seed (the others only score the English "
                                                 "references' likelihood: no claim reads English answers)")
    dose_answers: bool = setting(True, "whether the dose runs generate answers (false: they only score the "
                                       "references' likelihood, and the dose chapter shows the log-odds and quality "
                                       "curves but no wrong-language curve)", keyed_at_default=False)
    gate_languages: GateLanguages = setting("study", "languages the gate's detector decides among: study (the profile's "
                                           "training and test languages and English) or all (langdetect's 55)")
    backend: EvalBackend = setting("local", "local (transformers in this process) or server (eval.server)")
    server: ServerSettings = setting(factory=ServerSettings, help="the completions server (backend = server)")
    likelihood: bool = setting(True, "score the reference answers' likelihood (needs test prompts with references)")
    likelihood_batch_size: int = setting(8, "answers per likelihood forward pass")
    likelihood_max_tokens: int = setting(256, "cap on a scored reference's tokens (a safety limit; "
                                              "likelihood_sentences decides the content scored)")
    likelihood_sentences: int = setting(0, "score the first N complete sentences of each reference, the same "
                                           "content in every language (0 = the whole reference)")


def _full_defaults() -> TrainConfig:
    return TrainConfig(method="full", epochs=3, learning_rate=2e-5, warmup_steps=0, warmup_ratio=0.03,
                       scheduler="cosine", loss_on="response")


@dataclass
class Profile:
    """Everything one book build, or one command, runs with."""

    name: str = setting("", "the profile's name (default: the file's name)")
    description: str = setting("", "one line shown at the top of the book")
    data: DataConfig = setting(factory=DataConfig, help="instruction data and test prompts")
    lora: TrainConfig = setting(factory=TrainConfig, help="the lora method")
    full: TrainConfig = setting(factory=_full_defaults, help="the full method")
    grid: GridConfig = setting(factory=GridConfig, help="models, methods, recipes and seeds")
    eval: EvalConfig = setting(factory=EvalConfig, help="answering and scoring")
    translation: TranslationSettings = setting(factory=TranslationSettings, help="the translation chapter")
    findings: FindingsConfig = setting(factory=FindingsConfig, help="the claims table's statistics")
    book: BookConfig = setting(factory=BookConfig, help="book execution")
    storage: StorageConfig = setting(factory=StorageConfig, help="what the artefacts folder keeps")
    tokens_per_second_estimate: float = setting(0.0, "measured training throughput (CPU profiles), for plan")
    estimate: EstimateConfig = setting(factory=EstimateConfig, help="rates for plan's prediction of the book's time")
    estimate_device: str = setting("", "what the estimate is for, e.g. 1x A100 80GB")
    estimate_tflops: float = setting(0.0, "peak dense bf16 TFLOP/s of that device (GPU profiles)")
    estimate_mfu: float = setting(0.35, "assumed model FLOP utilisation")

    def train_config(self, method: str) -> TrainConfig:
        if method not in allowed(Method):
            raise ValueError(f"unknown method {method!r}: expected 'lora' or 'full'")
        return getattr(self, method)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# --- reading values against the declared types ------------------------------------------------

_INVALID = object()  # what _convert returns for a value that does not fit the type


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (``DecodingConfig`` for ``DecodingConfig | None``), if any."""
    candidates = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def describe_type(hint: Any) -> str:
    """How a type reads in a message: "a number", "a list of strings", "a whole number or none"."""
    if _is_union(hint):
        inner = [describe_type(a) for a in typing.get_args(hint) if a is not type(None)]
        none = " or none" if type(None) in typing.get_args(hint) else ""
        return " or ".join(inner) + none
    if dataclasses.is_dataclass(hint):
        return "a table of settings"
    if typing.get_origin(hint) is Literal:
        names = [str(v) for v in typing.get_args(hint)]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    simple = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    plural = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings"}
    if origin in (list, tuple):
        if typing.get_origin(args[0]) is Literal:
            return f"a list of values among {', '.join(map(str, typing.get_args(args[0])))}"
        return f"a list of {plural.get(args[0], 'values')}"
    if origin is dict:
        return f"a table of {plural.get(args[1], 'values')}"
    return str(hint)


def _number_text(text: str) -> int | float | object:
    """"2" -> 2, "1e-3" -> 0.001; anything else (including nan and inf) is not a number here."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return _INVALID
    return value if math.isfinite(value) else _INVALID


def _json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _INVALID


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint``, or ``_INVALID``. Text (from the command line) converts where
    that is unambiguous; a float field holds a float (the whole number 2 becomes 2.0), so that
    ``-s lora.epochs 2``, ``-s lora.epochs 2.0`` and ``epochs = 2`` in the file are one setting,
    with one run id."""
    if _is_union(hint):
        if type(None) in typing.get_args(hint) and (
                value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))):
            return None
        for option in typing.get_args(hint):
            if option is not type(None):
                converted = _convert(value, option)
                if converted is not _INVALID:
                    return converted
        return _INVALID
    if hint is Any:
        return value
    if typing.get_origin(hint) is Literal:
        return value if isinstance(value, str) and value in typing.get_args(hint) else _INVALID
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return _INVALID
    if hint is int:
        if isinstance(value, str):
            value = _number_text(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if hint is float:
        if isinstance(value, str):
            value = _number_text(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else _INVALID
    if hint is str:
        return value if isinstance(value, str) else _INVALID
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _json_text(value)
        if not isinstance(value, (list, tuple)):
            return _INVALID
        items = [_convert(item, args[0]) for item in value]
        if any(item is _INVALID for item in items):
            return _INVALID
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = _json_text(value)
        if not isinstance(value, dict):
            return _INVALID
        table = {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
        if any(k is _INVALID or v is _INVALID for k, v in table.items()):
            return _INVALID
        return table
    if dataclasses.is_dataclass(hint):
        return _INVALID  # a table of settings arrives as a dict and is built by _build
    raise TypeError(f"polyalpaca.config: no conversion for the declared type {hint!r}")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _build(cls: type, values: dict, prefix: str, problems: list[str]) -> Any:
    """Dataclass ``cls`` from a table, every value converted to its field's declared type.

    Unknown keys and values of the wrong type are appended to ``problems``, each naming its
    dotted key (``prefix`` is the table's key plus a dot); such a field keeps its default so
    the rest of the profile is still read and every problem is found in one pass."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = prefix + key
        if key not in known:
            where = f"in [{prefix[:-1]}]" if prefix else "at the top level"
            problems.append(f"{dotted}: unknown setting; known {where}: {', '.join(sorted(known))}")
            continue
        hint = hints[key]
        table = _dataclass_in(hint)
        if table is not None and isinstance(value, dict):
            kwargs[key] = _build(table, value, dotted + ".", problems)
            continue
        converted = _convert(value, hint)
        if converted is _INVALID:
            problems.append(f"{dotted}: expected {describe_type(hint)}, got {_show(value)}")
        else:
            kwargs[key] = converted
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any, problems: list[str]) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"{dotted}: {'.'.join(parts[:i + 1])} is a single value, not a table of settings")
            return
        node = child
    node[parts[-1]] = value


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def profile_path(name_or_path: str) -> Path:
    """The TOML file of a profile name (``tiny``, ``cpu``, ``paper``) or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise FileNotFoundError(f"no profile {name_or_path!r}; available: {', '.join(available_profiles())}")
    return path


def read_profile(name_or_path: str, overrides: dict[str, Any] | None = None) -> tuple[Profile, list[str]]:
    """The profile with its overrides applied, and the problems found reading it (unknown keys,
    values of the wrong type; fields with a problem keep their defaults). See ``load_profile``."""
    path = profile_path(name_or_path)
    try:
        with path.open("rb") as fh:
            tree = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{path}: not valid TOML: {exc}"]) from None
    problems: list[str] = []
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value, problems)
    tree.setdefault("name", path.stem)
    profile = _build(Profile, tree, "", problems)
    # Every method inherits the profile's method name from its table.
    profile.lora.method, profile.full.method = "lora", "full"
    return profile, problems


def with_overrides(profile: Profile, overrides: dict[str, Any]) -> Profile:
    """A copy of ``profile`` with dotted settings changed, checked like any override (a
    ``SettingsError`` naming every unknown key and every value of the wrong type)."""
    tree = dataclasses.asdict(profile)
    problems: list[str] = []
    for key, value in overrides.items():
        _set_dotted(tree, key, value, problems)
    new = _build(Profile, tree, "", problems)
    if problems:
        raise SettingsError(problems)
    return new


def load_profile(name_or_path: str, overrides: dict[str, Any] | None = None) -> Profile:
    """Read a profile by name (``tiny``, ``cpu``, ``paper``) or TOML path, then apply overrides
    (dotted keys; values typed or as command-line text). Raises ``SettingsError`` listing every
    unknown key and every value that does not fit its field's type."""
    profile, problems = read_profile(name_or_path, overrides)
    if problems:
        raise SettingsError(problems)
    return profile


def settings_help(profile: Profile | None = None) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, value as JSON, help) for every setting, with the values of ``profile``
    (default: the dataclasses' own defaults)."""
    rows = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((prefix + f.name, describe_type(hints[f.name]), json.dumps(value, ensure_ascii=False),
                             f.metadata.get("help", "")))

    walk(profile if profile is not None else Profile(), "")
    return rows
