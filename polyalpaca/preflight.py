"""The preflight: every setting of a profile checked in about a second, before anything long runs.

``polyalpaca.config`` already checks each value against its field's type when a profile is
read. The rules here check what a type cannot say: allowed values (methods, ``loss_on``,
schedulers, sources), ranges (beams >= 1, lengths > 0), and how fields must agree (unseen
languages absent from training, languages present in the chosen data, a likelihood score only
on test prompts with references, a judge whose key is in the environment). Each rule is one
function returning its problems as strings that name the dotted key.

``preflight`` reads a profile and raises one ``SettingsError`` listing every problem: the
command line (``polyalpaca check``, ``book``, ``run``, ``train``, ``evaluate``, ``plan``) and
``chapter.setup`` call it before importing torch or loading a model.

Nothing heavy is imported here: the rules read only the profile, the embedded data's language
lists, the recipe names, the environment and the file system. What a valid profile will cost in
time and disk is the plan's (``planning.plan_table``, ``planning.disk_estimate``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .config import FindingsConfig, Method, Profile, SettingsError, allowed, read_profile
from .data import EMBEDDED_TEST_LANGUAGES, EMBEDDED_TRAIN_LANGUAGES, LANGUAGES
from .files import JsonlError, iter_jsonl
from .prompts import load_template
from .recipes import RECIPES, dose_language

# serving (openai) is imported only for a profile with the server backend.

# The allowed values of a setting are declared on its field (``polyalpaca.config``, as ``Literal``)
# and checked where its type is; the rules here are those that a type cannot state.
METHODS = allowed(Method)

Rule = Callable[[Profile], list[str]]


def _number(value) -> str:
    """A number as a user would write it: 0, 1, 0.5, 1e-05 (a float field's 0.0 shows as 0)."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _at_least(key: str, value: float, low: float) -> list[str]:
    return [] if value >= low else [f"{key}: must be >= {low}, got {_number(value)}"]


def _above(key: str, value: float, low: float) -> list[str]:
    return [] if value > low else [f"{key}: must be > {low}, got {_number(value)}"]


def _twice(key: str, values: list) -> list[str]:
    repeated = [v for v in dict.fromkeys(values) if values.count(v) > 1]
    return [f"{key}: {v!r} is listed more than once" for v in repeated]


def _key_missing(key: str, env_name: str, why: str) -> list[str]:
    """The environment variable ``env_name`` (named by setting ``key``) must hold a key; its value is never shown."""
    if not env_name or os.environ.get(env_name):
        return []
    return [f"{key}: the environment variable {env_name} is not set; {why}"]


# --- training -----------------------------------------------------------------------------------

def check_methods(p: Profile) -> list[str]:
    """``grid.methods``: one or more, each once."""
    if not p.grid.methods:
        return [f"grid.methods: empty; expected one or more of {', '.join(METHODS)}"]
    return _twice("grid.methods", p.grid.methods)


def check_training_numbers(p: Profile) -> list[str]:
    """Epochs, learning rate, batch, lengths, warm-up and the LoRA adapter in their ranges."""
    problems = []
    for m in METHODS:
        c = p.train_config(m)
        problems += _above(f"{m}.epochs", c.epochs, 0)
        problems += _above(f"{m}.learning_rate", c.learning_rate, 0)
        problems += _at_least(f"{m}.batch_size", c.batch_size, 1)
        problems += _at_least(f"{m}.gradient_accumulation", c.gradient_accumulation, 1)
        problems += _at_least(f"{m}.max_length", c.max_length, 1)
        problems += _at_least(f"{m}.warmup_steps", c.warmup_steps, 0)
        if not 0 <= c.warmup_ratio < 1:
            problems.append(f"{m}.warmup_ratio: must be >= 0 and < 1, got {_number(c.warmup_ratio)}")
        problems += _at_least(f"{m}.weight_decay", c.weight_decay, 0)
        problems += _at_least(f"{m}.logging_steps", c.logging_steps, 1)
        problems += _at_least(f"{m}.lora.r", c.lora.r, 1)
        if not 0 <= c.lora.dropout < 1:
            problems.append(f"{m}.lora.dropout: must be >= 0 and < 1, got {_number(c.lora.dropout)}")
        if not c.lora.target_modules:
            problems.append(f"{m}.lora.target_modules: empty; name the modules that get an adapter")
    return problems


def check_templates(p: Profile) -> list[str]:
    """Each method's and each decoding's prompt template exists; ``validation_limit`` >= 0."""
    named = [(f"{m}.template", p.train_config(m).template) for m in METHODS]
    named += [(f"{key}.template", d.template) for key, d in (("eval.decoding", p.eval.decoding),
                                                             ("eval.decoding_full", p.eval.decoding_full)) if d]
    problems = [msg for m in METHODS for msg in _at_least(f"{m}.validation_limit", p.train_config(m).validation_limit, 0)]
    for key, name in named:
        if name:
            try:
                load_template(name)
            except FileNotFoundError as exc:
                problems.append(f"{key}: {exc}")
    return problems


def check_effective_batch(p: Profile) -> list[str]:
    """``effective_batch``: 0 (use gradient_accumulation) or a multiple of ``batch_size``."""
    problems = []
    for m in METHODS:
        c = p.train_config(m)
        if c.effective_batch < 0:
            problems.append(f"{m}.effective_batch: must be >= 0 (0 = use gradient_accumulation), got {c.effective_batch}")
        elif c.effective_batch and c.batch_size >= 1 and c.effective_batch % c.batch_size:
            problems.append(f"{m}.effective_batch: {c.effective_batch} is not a multiple of {m}.batch_size "
                            f"({c.batch_size})")
    return problems


# --- data ---------------------------------------------------------------------------------------

def check_data_source(p: Profile) -> list[str]:
    """``data.source``: embedded, hub or files; files needs a ``files_pattern`` whose files exist."""
    d = p.data
    if d.source != "files":
        return []
    if not d.files_pattern:
        return ["data.files_pattern: empty; data.source = 'files' needs a pattern such as data/alpaca_{lang}.json"]
    if "{lang}" not in d.files_pattern:
        return [f"data.files_pattern: {d.files_pattern!r} has no {{lang}} placeholder"]
    return [f"data.files_pattern: no file {d.files_pattern.format(lang=lang)} for training language {lang!r}"
            for lang in d.train_languages if lang in LANGUAGES and not Path(d.files_pattern.format(lang=lang)).is_file()]


def check_test_source(p: Profile) -> list[str]:
    """``data.test_source``: embedded, paper-url, or a folder with test_{lang}.jsonl per test language."""
    source = p.data.test_source
    if source in ("embedded", "paper-url"):
        return []
    folder = Path(source)
    if not folder.is_dir():
        return [f"data.test_source: expected embedded, paper-url or a folder with test_{{lang}}.jsonl; "
                f"no folder {source!r}"]
    return [f"data.test_source: {folder / f'test_{lang}.jsonl'} is missing (test language {lang!r})"
            for lang in p.data.test_languages if not (folder / f"test_{lang}.jsonl").is_file()]


def check_languages(p: Profile) -> list[str]:
    """Every language code known to the project; training and test lists non-empty, without repeats."""
    problems = []
    lists = {"data.train_languages": p.data.train_languages, "data.test_languages": p.data.test_languages,
             "data.unseen_languages": p.data.unseen_languages, "translation.languages": p.translation.languages,
             "grid.dose_mix_language": [p.grid.dose_mix_language] if p.grid.dose_mix_language else []}
    for key, codes in lists.items():
        problems += [f"{key}: unknown language code {code!r}; known: {', '.join(LANGUAGES)}"
                     for code in codes if code not in LANGUAGES]
        problems += _twice(key, codes)
    for key in ("data.train_languages", "data.test_languages", "translation.languages"):
        if not lists[key]:
            problems.append(f"{key}: empty")
    return problems


def check_embedded_languages(p: Profile) -> list[str]:
    """With the embedded data, every language must be in it; the translation study compares with
    the embedded translations of our English records."""
    problems = []
    if p.data.source == "embedded":
        problems += [f"data.train_languages: {lang!r} is not in the embedded training data "
                     f"({', '.join(EMBEDDED_TRAIN_LANGUAGES)}); use data.source = hub or files for it"
                     for lang in p.data.train_languages if lang in LANGUAGES and lang not in EMBEDDED_TRAIN_LANGUAGES]
    if p.data.test_source == "embedded":
        problems += [f"data.test_languages: {lang!r} is not in the embedded test data "
                     f"({', '.join(EMBEDDED_TEST_LANGUAGES)}); use data.test_source = paper-url or a folder for it"
                     for lang in p.data.test_languages if lang in LANGUAGES and lang not in EMBEDDED_TEST_LANGUAGES]
    for lang in p.translation.languages:
        if lang == "en":
            problems.append("translation.languages: 'en' is the language translated from")
        elif lang in LANGUAGES and lang not in EMBEDDED_TRAIN_LANGUAGES:
            problems.append(f"translation.languages: {lang!r} has no embedded reference translations "
                            f"({', '.join(l for l in EMBEDDED_TRAIN_LANGUAGES if l != 'en')})")
    return problems


def check_unseen_languages(p: Profile) -> list[str]:
    """``data.unseen_languages``: really absent from training, and tested."""
    d = p.data
    problems = [f"data.unseen_languages: {lang!r} is a training language (data.train_languages)"
                for lang in d.unseen_languages if lang in d.train_languages]
    problems += [f"data.unseen_languages: {lang!r} is not a test language (data.test_languages)"
                 for lang in d.unseen_languages if lang not in d.test_languages]
    return problems


def check_limits(p: Profile) -> list[str]:
    """``train_limit``/``test_limit`` positive or none; ``validation_size`` leaves records to train on."""
    d = p.data
    problems = []
    for key, value in (("data.train_limit", d.train_limit), ("data.test_limit", d.test_limit)):
        if value is not None and value < 1:
            problems.append(f"{key}: must be >= 1 or none (all records), got {value}")
    problems += _at_least("data.validation_size", d.validation_size, 0)
    if d.train_limit is not None and d.train_limit >= 1 and d.validation_size >= d.train_limit:
        problems.append(f"data.validation_size: {d.validation_size} leaves nothing to train on; it must be "
                        f"smaller than data.train_limit ({d.train_limit})")
    return problems


# --- the grid -----------------------------------------------------------------------------------

def check_recipes(p: Profile) -> list[str]:
    """``grid.recipes``: one or more, each once; english-only needs English training data."""
    if not p.grid.recipes:
        return [f"grid.recipes: empty; expected one or more of {', '.join(RECIPES)}"]
    problems = _twice("grid.recipes", p.grid.recipes)
    if "english-only" in p.grid.recipes and "en" not in p.data.train_languages:
        problems.append("grid.recipes: english-only needs 'en' in data.train_languages")
    return problems


def check_doses(p: Profile) -> list[str]:
    """The dose recipe: English and the dose language among the training languages, doses between
    0 and the English set's size (exclusive: dose 0 is the English-only model, the full dose uses
    the monolingual model's records), distinct."""
    g, langs = p.grid, p.data.train_languages
    if "dose" not in g.recipes:
        return []  # the doses are the dose recipe's: without it they train nothing
    problems = [] if g.doses else ["grid.doses: empty; the dose recipe needs one or more doses (records replaced)"]
    lang = dose_language(langs, g.dose_language)
    if "en" not in langs:
        problems.append("grid.recipes: dose needs 'en' in data.train_languages")
    if not lang or lang == "en" or lang not in langs:
        problems.append(f"grid.dose_language: {g.dose_language!r} is not a non-English training language "
                        f"(data.train_languages: {', '.join(langs)})")
    size = p.data.train_limit - p.data.validation_size if p.data.train_limit else None
    for k in dict.fromkeys(g.doses):
        if k <= 0 or (size is not None and k >= size):
            upper = f"{size} (the English set's size)" if size is not None else "the English set's size"
            problems.append(f"grid.doses: {k} is not between 0 and {upper}, exclusive: dose 0 is the English-only "
                            "model and the full dose the monolingual model's records")
    if not 0 <= g.dose_seeds <= len(g.seeds):
        problems.append(f"grid.dose_seeds: {g.dose_seeds} is not between 0 (every seed) and {len(g.seeds)} (grid.seeds)")
    return problems + dose_mix_problems(p, lang) + _twice("grid.doses", g.doses)


def dose_mix_problems(p: Profile, dose_lang: str) -> list[str]:
    """The second axis (``grid.dose_mix_language``): a language other than English, the dose
    language and the unseen ones (it would stop being unseen), with training data; every dose
    splits into two non-empty halves (at least 2 records). ``check_languages`` checks the code."""
    mix, d = p.grid.dose_mix_language, p.data
    if not mix:
        return []
    problems = []
    if mix in ("en", dose_lang) or mix in d.unseen_languages:
        problems.append(f"grid.dose_mix_language: {mix!r} must differ from 'en', the dose language ({dose_lang!r}) "
                        f"and the unseen languages ({', '.join(d.unseen_languages) or 'none'})")
    elif d.source == "embedded" and mix in LANGUAGES and mix not in EMBEDDED_TRAIN_LANGUAGES:
        problems.append(f"grid.dose_mix_language: {mix!r} is not in the embedded training data "
                        f"({', '.join(EMBEDDED_TRAIN_LANGUAGES)})")
    problems += [f"grid.doses: {k} cannot be split between two languages (grid.dose_mix_language needs doses of "
                 "2 or more)" for k in dict.fromkeys(p.grid.doses) if k < 2]
    return problems


def check_grid(p: Profile) -> list[str]:
    """``grid.models`` and ``grid.seeds``: non-empty; seeds distinct."""
    problems = [] if p.grid.models else ["grid.models: empty; name at least one base model"]
    problems += _twice("grid.models", p.grid.models)
    if not p.grid.seeds:
        problems.append("grid.seeds: empty; give at least one training seed")
    return problems + _twice("grid.seeds", p.grid.seeds)


def check_findings(p: Profile) -> list[str]:
    """``findings``: alpha in (0, 1), margins >= 0 and named after a measure, at least one seed."""
    f = p.findings
    problems = [] if 0 < f.alpha < 1 else [f"findings.alpha: must be > 0 and < 1, got {_number(f.alpha)}"]
    problems += [msg for name, margin in f.margins.items() for msg in _at_least(f"findings.margins.{name}", margin, 0)]
    measures = list(FindingsConfig().margins)  # every measure has a default margin
    problems += [f"findings.margins.{name}: not a measure; expected one of {', '.join(measures)}"
                 for name in f.margins if name not in measures]
    return problems + _at_least("findings.min_seeds", f.min_seeds, 1)


# --- evaluation ---------------------------------------------------------------------------------

def check_decoding(p: Profile) -> list[str]:
    """Decoding: beams >= 1, new tokens > 0, batch > 0, no_repeat_ngram_size >= 0, repetition_penalty > 0."""
    problems = []
    tables = {"eval.decoding": p.eval.decoding, "eval.decoding_full": p.eval.decoding_full}
    for key, d in tables.items():
        if d is None:
            continue
        problems += _at_least(f"{key}.num_beams", d.num_beams, 1)
        problems += _above(f"{key}.max_new_tokens", d.max_new_tokens, 0)
        problems += _above(f"{key}.batch_size", d.batch_size, 0)
        problems += _at_least(f"{key}.no_repeat_ngram_size", d.no_repeat_ngram_size, 0)
        problems += _above(f"{key}.repetition_penalty", d.repetition_penalty, 0)
    return problems + _above("eval.likelihood_batch_size", p.eval.likelihood_batch_size, 0)


def check_gate(p: Profile) -> list[str]:
    """``eval.likelihood_sentences`` not negative."""
    return _at_least("eval.likelihood_sentences", p.eval.likelihood_sentences, 0)


def check_eval_backend(p: Profile) -> list[str]:
    """``eval.backend = server`` needs ``eval.server.base_url`` and decoding a server can do."""
    e = p.eval
    if e.backend != "server":
        return []
    problems = [] if e.server.base_url else [
        "eval.server.base_url: empty; eval.backend = 'server' needs the server's URL, e.g. http://localhost:8000/v1"]
    from .serving import server_decoding_problems  # only for the server backend (it imports openai)

    for key, decoding in (("eval.decoding", e.decoding), ("eval.decoding_full", e.decoding_full)):
        if decoding is not None:
            problems += [f"{key}.{problem}" for problem in server_decoding_problems(decoding)]
    return problems + _at_least("eval.server.max_concurrency", e.server.max_concurrency, 1)


def _has_references(path: Path) -> str:
    """'' when every prompt in the JSONL file has a non-empty reference, else where the first does not."""
    for lineno, row in iter_jsonl(path):
        if isinstance(row, JsonlError):
            return f"{path}:{lineno} is not valid JSON"
        if not (isinstance(row, dict) and isinstance(row.get("reference"), str) and row["reference"].strip()):
            return f"{path}:{lineno} has no reference answer"
    return ""


def check_likelihood_references(p: Profile) -> list[str]:
    """``eval.likelihood`` scores reference answers: only on test prompts that have them."""
    source = p.data.test_source
    if not p.eval.likelihood or source == "embedded":
        return []
    if source == "paper-url":
        return ["eval.likelihood: the paper's test prompts (data.test_source = 'paper-url') have no reference "
                "answers to score; set eval.likelihood false"]
    for lang in p.data.test_languages:
        path = Path(source) / f"test_{lang}.jsonl"
        if path.is_file():
            missing = _has_references(path)
            if missing:
                return [f"eval.likelihood: {missing}; set eval.likelihood false or add references"]
    return []


def check_judge(p: Profile) -> list[str]:
    """A judge is configured with both ``base_url`` and ``model``, or with neither (offline scores)."""
    j = p.eval.judge
    if not (j.base_url or j.model):
        return []
    problems = []
    if not j.base_url:
        problems.append("eval.judge.base_url: empty, but eval.judge.model is set; give both, or neither for offline scores")
    if not j.model:
        problems.append("eval.judge.model: empty, but eval.judge.base_url is set; give both, or neither for offline scores")
    return problems + _at_least("eval.judge.max_concurrency", j.max_concurrency, 1)


def check_translation(p: Profile) -> list[str]:
    """``translation``: the api backend needs ``base_url``; a model; sizes in range."""
    t = p.translation
    problems = []
    if t.backend == "api" and not t.base_url:
        problems.append("translation.base_url: empty; translation.backend = 'api' needs the endpoint's URL")
    if not t.model:
        problems.append("translation.model: empty")
    problems += _at_least("translation.records", t.records, 1)
    problems += _at_least("translation.examples", t.examples, 0)
    problems += _above("translation.max_new_tokens", t.max_new_tokens, 0)
    problems += _above("translation.batch_size", t.batch_size, 0)
    return problems + _at_least("translation.max_concurrency", t.max_concurrency, 1)


def check_book(p: Profile) -> list[str]:
    """``book.chapter_timeout_s`` > 0."""
    return _above("book.chapter_timeout_s", p.book.chapter_timeout_s, 0)


# --- the environment: API keys (never printed) -------------------------------------------------

def check_judge_key(p: Profile) -> list[str]:
    """A configured judge's key variable is set."""
    j = p.eval.judge
    if not (j.base_url and j.model):
        return []
    return _key_missing("eval.judge.api_key_env", j.api_key_env,
                        f"the judge ({j.model}) needs its key (or set eval.judge.base_url and eval.judge.model "
                        "to '' for offline scores only)")


def check_translation_key(p: Profile) -> list[str]:
    """The translation endpoint's key variable is set (backend = api)."""
    t = p.translation
    if t.backend != "api":
        return []
    return _key_missing("translation.api_key_env", t.api_key_env, "translation.backend = 'api' needs its key")


def check_server_key(p: Profile) -> list[str]:
    """The completions server's key variable is set (eval.backend = server)."""
    if p.eval.backend != "server":
        return []
    return _key_missing("eval.server.api_key_env", p.eval.server.api_key_env,
                        "eval.backend = 'server' needs its key (or set eval.server.api_key_env to '' for a server "
                        "without one)")


SETTINGS_RULES: tuple[Rule, ...] = (
    check_methods, check_training_numbers, check_templates, check_effective_batch, check_data_source, check_test_source, check_languages,
    check_embedded_languages, check_unseen_languages, check_limits, check_recipes, check_doses, check_grid, check_findings,
    check_decoding, check_gate, check_eval_backend, check_likelihood_references, check_judge, check_translation, check_book,
)
# The endpoints whose API key a command may need in its environment, and each one's rule.
KEY_RULES: dict[str, Rule] = {"judge": check_judge_key, "translation": check_translation_key,
                              "server": check_server_key}


def find_problems(profile: Profile, endpoints: tuple[str, ...] | None = None) -> list[str]:
    """Every rule's problems. ``endpoints`` names the endpoints whose key must be in the
    environment (judge, translation, server): all by default (the book needs them all);
    ``()`` for commands that call none, such as ``plan`` and ``train``."""
    names = tuple(KEY_RULES) if endpoints is None else endpoints
    rules = SETTINGS_RULES + tuple(KEY_RULES[name] for name in names)
    return [problem for rule in rules for problem in rule(profile)]


def preflight(name_or_path: str, overrides: dict[str, Any] | None = None,
              endpoints: tuple[str, ...] | None = None) -> Profile:
    """Read and check a profile: returns it, or raises one ``SettingsError`` listing every
    problem (values of the wrong type and broken rules together). ``endpoints``: see ``find_problems``."""
    profile, problems = read_profile(name_or_path, overrides)
    problems += find_problems(profile, endpoints)
    if problems:
        raise SettingsError(problems)
    return profile
