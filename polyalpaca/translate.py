"""Machine translation of Alpaca records (``instruction``, ``input``, ``output``).

Each non-empty field is one translation job. Before translation, spans that must not change
(fenced code, inline code, URLs, ``{placeholders}``, numbers, and our own delimiter tags) are
replaced by opaque markers ``⟦0⟧, ⟦1⟧, ...`` and put back afterwards. A reply is accepted only
if it holds exactly one ``<translation>...</translation>`` block, every marker exactly once, and
(for texts with enough letters) is detected by langdetect as the target language; otherwise it
is asked again (API backend) and finally reported as a failure, never written as a translation.

What to translate and how is the profile's ``translation`` table (``config.TranslationSettings``:
its endpoint or local model, languages, prompt version, generation limits); the command line
fills the same settings from its options. Two backends share one interface
(``TranslationBackend.translate(jobs, prompt, settings)``):

- ``ApiBackend``: any OpenAI-compatible endpoint through ``polyalpaca.llm_client.ChatClient``
  (concurrency, retries, resumable cache, ledger);
- ``LocalBackend``: a causal LM in this process via ``polyalpaca.generate.generate_texts``.
  Decoding is greedy, so a rejected reply would come back identical: one try per job.

``translate_records`` returns one ``TranslatedRecord`` per (language, record), languages in the
configured order and records in input order. ``translate_command`` runs the ``polyalpaca translate``
command (its options are parsed in ``polyalpaca.cli``). ``chrf_for_translations`` scores translations against references with chrF
(``polyalpaca.metrics``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from .config import TranslationSettings
from .data import LANGUAGES, check_language, load_training_records
from .files import JsonlError, iter_jsonl, write_jsonl as _write_jsonl  # the name translate_command uses
from .langid import LETTER, detect_language
from .llm_client import ChatClient, ChatPrompt, ChatRequest, EndpointConfig, EndpointError, InvalidReply, load_prompt
from .metrics import chrf_by_language
from .paths import cache_dir
from .store import Cached, text_digest

# generate, models and llm_client (torch, transformers, openai), tqdm and pandas are imported
# by the backend or table that uses them: the API path never loads torch.

ALPACA_FIELDS = ("instruction", "input", "output")
LANGUAGE_NAMES = LANGUAGES  # one table for the whole project

# Spans kept verbatim, in priority order (the first alternative that matches at a position wins).
_PROTECTED_PATTERNS = (
    r"```.*?(?:```|\Z)",  # fenced code block (an unclosed fence runs to the end)
    r"`[^`\n]+`",  # inline code
    r"(?:https?|ftp)://[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]]",  # URL, without trailing punctuation
    r"www\.[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]]",
    r"\{\{?[\w.\-\[\]]*(?::[^{}\s]*)?\}\}?",  # {placeholder}, {{name}}, {0:.2f}, {}
    r"</?(?:source|translation)>",  # the prompt's own delimiters
    r"⟦\d+⟧",  # text that already looks like a marker
    r"(?<![\w.,:])\d+(?:[.,:]\d+)*(?![\w]|[.,:]\d)",  # a number: 42, 3.14, 1,000, 10:30
)
_PROTECTED = re.compile("|".join(f"(?:{p})" for p in _PROTECTED_PATTERNS), re.S)
_MARKER = re.compile(r"⟦\s*(\d+)\s*⟧")
_TRANSLATION = re.compile(r"<translation>(.*?)</translation>", re.S)
_LANGDETECT_LOCK = threading.Lock()  # langdetect's lazy global set-up is not thread-safe


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------
SOURCE_LANGUAGE = "en"  # what the records are in (the command's --source-language changes it)
MAX_INVALID_REPLIES = 3  # API backend: replies asked for before a job is reported failed
LANGUAGE_CHECK_MIN_LETTERS = 20  # shorter texts skip language ID (too unreliable)
# The command's defaults where they differ from the chapter's (a chat model's prompt, long records).
COMMAND_PROMPT_VERSION = "translate_v1"
COMMAND_MAX_NEW_TOKENS = 512


def check_targets(languages: Sequence[str], source_language: str = SOURCE_LANGUAGE) -> None:
    """``ValueError`` unless every language is known, the targets are not empty and do not hold
    the source language."""
    for code in [source_language, *languages]:
        check_language(code, "translation")
    if source_language in languages:
        raise ValueError(f"translation.languages contains the source language {source_language!r}")
    if not languages:
        raise ValueError("translation.languages is empty")


@dataclass
class FieldFailure:
    """A field that could not be translated: why, and every reply that was rejected."""

    index: int
    language: str
    field: str
    reason: str
    replies: list[str] = field(default_factory=list)


@dataclass
class TranslatedRecord:
    """Record ``index`` of the input in ``language``. ``record`` is None when any field failed
    (a partly translated record is never returned); other keys of the input are copied."""

    index: int
    language: str
    record: dict[str, Any] | None
    failures: list[FieldFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.record is not None


# --------------------------------------------------------------------------------------------
# Protected spans and reply checking
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protected:
    """A text with its protected spans replaced by markers ``⟦i⟧`` (``spans[i]`` is the original)."""

    text: str
    spans: tuple[str, ...]

    def restore(self, translated: str) -> str:
        """Put the spans back; raises ``InvalidReply`` unless every marker occurs exactly once."""
        found = [int(m) for m in _MARKER.findall(translated)]
        expected = range(len(self.spans))
        missing = [i for i in expected if i not in found]
        extra = sorted({i for i in found if found.count(i) > 1 or i not in expected})
        if missing or extra:
            raise InvalidReply("protected markers changed: "
                               + "; ".join(filter(None, [missing and f"missing {_markers(missing)}",
                                                         extra and f"duplicated or unknown {_markers(extra)}"])))
        return _MARKER.sub(lambda m: self.spans[int(m.group(1))], translated)


def _markers(indices: Sequence[int]) -> str:
    return " ".join(f"⟦{i}⟧" for i in indices)


def protect(text: str) -> Protected:
    """Replace code, URLs, placeholders and numbers by markers."""
    spans: list[str] = []

    def keep(match: re.Match) -> str:
        spans.append(match.group(0))
        return f"⟦{len(spans) - 1}⟧"

    return Protected(_PROTECTED.sub(keep, text), tuple(spans))


def to_translate(text: str) -> Protected | None:
    """The protected form of ``text``, or None when there is nothing to translate (an empty
    field, or one made only of code, numbers, links and placeholders: it is kept as is)."""
    protected = protect(text)
    return protected if LETTER.search(_MARKER.sub("", protected.text)) else None


@dataclass(frozen=True)
class TranslationJob:
    """One text to translate into one language (identical jobs are translated once)."""

    protected: Protected
    source_language: str
    target_language: str
    language_check_min_letters: int = 20
    examples: tuple[tuple[str, str], ...] = ()

    def messages(self, prompt: ChatPrompt) -> list[dict[str, str]]:
        return prompt.render(self.examples, source_name=LANGUAGE_NAMES[self.source_language],
                             source_code=self.source_language, target_name=LANGUAGE_NAMES[self.target_language],
                             target_code=self.target_language, text=self.protected.text)

    def check_reply(self, reply: str) -> str:
        """The translation, markers still in place, or ``InvalidReply`` (unparseable, markers
        changed, wrong language). Markers stay so that every text sharing this job's marked-up
        form (e.g. "Add 2 and 3." and "Add 5 and 7.") restores its own spans."""
        blocks = _TRANSLATION.findall(reply)
        if len(blocks) != 1:
            raise InvalidReply(f"expected one <translation>...</translation> block, found {len(blocks)}: "
                               f"{reply[:80]!r}")
        body = blocks[0].strip()
        if not body:
            raise InvalidReply("empty <translation> block")
        self.protected.restore(body)  # raises unless every marker is there exactly once
        words = _MARKER.sub(" ", body)
        if len(LETTER.findall(words)) >= self.language_check_min_letters:
            with _LANGDETECT_LOCK:
                detected = detect_language(words, seed=0)
            if detected != self.target_language:
                raise InvalidReply(f"reply is in {detected!r}, expected {self.target_language!r}")
        return body


@dataclass
class JobOutcome:
    """A job's translation (``text``, with markers) or, when it failed, ``error`` and the replies."""

    text: str | None
    error: str | None = None
    replies: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------
class TranslationBackend(Protocol):
    def translate(self, jobs: Sequence[TranslationJob], prompt: ChatPrompt,
                  settings: TranslationSettings) -> list[JobOutcome]:
        """One outcome per job, in order."""
        ...


def check_no_new_example(reply: str, job: TranslationJob) -> None:
    """Reject (``InvalidReply``) a base model's continuation that runs on into a new pair of the
    prompt's worked examples: a line of the reply that starts with the source or the target
    language's label ("English:", "Spanish:"), as the examples' lines do. What comes before it may
    be a translation, but the reply as a whole is not one, and is not written as one."""
    labels = tuple(f"{LANGUAGE_NAMES[code]}:" for code in (job.source_language, job.target_language))
    for line in _strip_tags(reply).splitlines():
        if line.strip().startswith(labels):
            raise InvalidReply(f"the reply continues the prompt's worked examples ({line.strip()[:40]!r})")


class ApiBackend:
    """Translate through an OpenAI-compatible endpoint (``ChatClient``), asking up to
    ``max_invalid_replies`` times for a reply that passes the checks."""

    def __init__(self, client: ChatClient, max_invalid_replies: int = MAX_INVALID_REPLIES):
        self.client = client
        self.max_invalid_replies = max_invalid_replies

    def translate(self, jobs: Sequence[TranslationJob], prompt: ChatPrompt,
                  settings: TranslationSettings) -> list[JobOutcome]:
        requests = [ChatRequest(job.messages(prompt), prompt.version, job.check_reply) for job in jobs]
        results = self.client.complete_many(requests, max_invalid=self.max_invalid_replies, desc="translate")
        return [JobOutcome(r.value, None, r.replies) if r.ok else JobOutcome(None, r.error, r.replies)
                for r in results]


class LocalBackend:
    """Translate with a causal LM in this process (``generate_texts``, greedy, one try per job)."""

    def __init__(self, model: Any, tokenizer: Any, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress

    def render(self, messages: list[dict[str, str]], continuation: bool = False) -> str:
        """A continuation prompt (base models) as it is, so the model writes on from its last
        character; otherwise the model's chat template when it has one, else the messages' text."""
        text = "\n\n".join(m["content"] for m in messages)
        if continuation:
            return text
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + "\n\n"

    def translate(self, jobs: Sequence[TranslationJob], prompt: ChatPrompt,
                  settings: TranslationSettings) -> list[JobOutcome]:
        from tqdm import tqdm

        from .generate import DecodingConfig, generate_texts  # imports torch: only when used

        # A base-model prompt (one with a [stop] section) is a document the model continues: the
        # continuation up to a stop string is the translation, put in tags for the common checks.
        opened = bool(prompt.stop)
        prompts = [self.render(job.messages(prompt), continuation=opened) for job in jobs]
        decoding = DecodingConfig(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                                  stop_strings=prompt.stop)
        with tqdm(total=len(prompts), desc="translate (local)", disable=not self.progress or not prompts,
                  mininterval=5.0) as bar:
            replies = generate_texts(self.model, self.tokenizer, prompts, decoding, on_batch=bar.update)
        if opened:
            replies = [f"<translation>{reply.strip()}</translation>" for reply in replies]
        outcomes = []
        for job, reply in zip(jobs, replies, strict=True):
            try:
                if opened:
                    check_no_new_example(reply, job)
                outcomes.append(JobOutcome(job.check_reply(reply), None, [reply]))
            except InvalidReply as exc:
                outcomes.append(JobOutcome(None, f"invalid reply: {exc}", [reply]))
        return outcomes


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
def field_problem(record: Any, fields: Sequence[str]) -> str | None:
    """Why ``record`` is not a usable record (None when it is)."""
    if not isinstance(record, Mapping):
        return f"expected a JSON object, got {type(record).__name__}"
    for name in fields:
        if name not in record:
            return f"field {name!r} is missing"
        if not isinstance(record[name], str):
            return f"field {name!r} must be a string, got {type(record[name]).__name__}"
    return None


def translate_records(records: Sequence[Mapping[str, Any]], settings: TranslationSettings,
                      backend: TranslationBackend, examples: Mapping[str, list[list[str]]] | None = None,
                      source_language: str = SOURCE_LANGUAGE) -> list[TranslatedRecord]:
    """Translate every record (from ``source_language``) into every language of ``settings``
    with its prompt version; ``examples`` are the worked examples per target language,
    ``{lang: [[source text, its translation], ...]}``, for the base-model prompts (their
    ``[example]`` section: a base model only continues a document, so it needs the pattern).

    Returns ``len(settings.languages) * len(records)`` items: for each language (settings
    order), each record (input order). Empty fields stay empty; fields with nothing but protected
    spans are copied; texts identical once protected (e.g. differing only in numbers) are
    translated once per language, each getting its own spans back.
    """
    check_targets(settings.languages, source_language)
    for index, record in enumerate(records):
        problem = field_problem(record, ALPACA_FIELDS)
        if problem:
            raise ValueError(f"record {index}: {problem}")
    prompt = load_prompt(settings.prompt_version)
    examples = examples or {}
    jobs: dict[tuple[str, str], TranslationJob] = {}
    for language in settings.languages:
        for record in records:
            for name in ALPACA_FIELDS:
                protected = to_translate(record[name])
                if protected is not None:
                    jobs.setdefault((language, protected.text), TranslationJob(
                        protected, source_language, language, LANGUAGE_CHECK_MIN_LETTERS,
                        tuple((src, tgt) for src, tgt in examples.get(language, []))))
    job_list = list(jobs.values())
    outcomes = dict(zip(jobs, backend.translate(job_list, prompt, settings), strict=True)) if job_list else {}

    translated = []
    for language in settings.languages:
        for index, record in enumerate(records):
            new, failures = dict(record), []
            for name in ALPACA_FIELDS:
                text = record[name]
                protected = to_translate(text)
                if protected is None:
                    continue
                outcome = outcomes[(language, protected.text)]
                if outcome.text is None:
                    failures.append(FieldFailure(index, language, name, outcome.error or "failed", outcome.replies))
                else:
                    lead, trail = text[:len(text) - len(text.lstrip())], text[len(text.rstrip()):]
                    new[name] = lead + protected.restore(outcome.text) + trail
            translated.append(TranslatedRecord(index, language, None if failures else new, failures))
    return translated


# --------------------------------------------------------------------------------------------
# chrF
# --------------------------------------------------------------------------------------------
def chrf_for_translations(translated: Sequence[TranslatedRecord],
                          references: Mapping[str, Sequence[Mapping[str, Any]]],
                          fields: Sequence[str] = ALPACA_FIELDS) -> dict[str, float]:
    """chrF per language of translated records against reference records with the same index
    (e.g. the embedded ``train/{lang}.jsonl``), with ``metrics.chrf_by_language``. Failed
    records and fields empty in the reference are left out."""
    hyps: dict[str, list[str]] = {}
    refs: dict[str, list[str]] = {}
    for item in translated:
        if item.record is None:
            continue
        reference_set = references.get(item.language)
        if reference_set is None:
            raise KeyError(f"chrF: no references for language {item.language!r}")
        if item.index >= len(reference_set):
            raise IndexError(f"chrF {item.language}: no reference record {item.index} "
                             f"(only {len(reference_set)})")
        for name in fields:
            if reference_set[item.index][name].strip():
                hyps.setdefault(item.language, []).append(item.record[name])
                refs.setdefault(item.language, []).append(reference_set[item.index][name])
    return chrf_by_language(hyps, refs)


# --------------------------------------------------------------------------------------------
# The translation chapter's study
# --------------------------------------------------------------------------------------------

#: The version of the reply checks: part of the study's key, so a stored study is redone when they change
#: (2: a base model's reply that continues the worked examples is rejected).
CHECKS_VERSION = 2


def translation_study(t: TranslationSettings, root) -> dict:
    """Translate the first ``translation.records`` English records into ``translation.languages``
    and score them with chrF against our reference translations; stored and reused."""
    root = Path(root)
    fields = ALPACA_FIELDS
    english = load_training_records("en", "embedded").items
    targets = {lang: load_training_records(lang, "embedded").items for lang in t.languages}
    prompt = load_prompt(t.prompt_version)
    # Keyed by the settings, the exact records (source, references, worked examples) and the prompt text.
    texts = [getattr(r, k) for recs in [english, *targets.values()] for r in recs for k in ("id", *fields)]
    cached = Cached(root / "translation", "study", {"settings": dataclasses.asdict(t), "records": text_digest(texts),
                                                    "prompt": text_digest([prompt.system, prompt.user]),
                                                    "checks": CHECKS_VERSION}, suffix="json")
    if cached.exists():
        return cached.read_json()
    source = [{k: getattr(r, k) for k in ("id", *fields)} for r in english[:t.records]]
    references = {lang: [{k: getattr(r, k) for k in ("id", *fields)} for r in recs[:t.records]]
                  for lang, recs in targets.items()}
    # Worked examples for base models: the last records' instructions (never in the sample),
    # with their numbers and code already replaced by markers, as the texts to translate are.
    if t.examples > len(english) - t.records:
        raise ValueError(f"translation.examples = {t.examples} overlaps the {t.records} records translated")
    examples = {lang: [[protect(english[-k].instruction).text, protect(recs[-k].instruction).text]
                       for k in range(1, t.examples + 1)] for lang, recs in targets.items()}
    ledger = None
    if t.backend == "local":
        from .models import load_model, load_tokenizer

        backend = LocalBackend(load_model(t.model), load_tokenizer(t.model), progress=False)
        translated = translate_records(source, t, backend, examples)
    elif t.backend == "api":
        with ChatClient(EndpointConfig.of(t), root / "llm-cache", progress=False) as client:
            translated = translate_records(source, t, ApiBackend(client), examples)
            ledger = client.ledger.to_dict()
    else:
        raise ValueError(f"translation.backend must be 'local' or 'api', got {t.backend!r}")
    ok = [x for x in translated if x.ok]
    chrf = chrf_for_translations(ok, references) if ok else {}
    rows = []
    for item in translated:
        for name in fields:
            ref = references[item.language][item.index][name]
            if not source[item.index][name].strip():
                continue
            failure = next((f for f in item.failures if f.field == name), None)
            rows.append({"id": source[item.index]["id"], "lang": item.language, "field": name,
                         "source": source[item.index][name], "reference": ref,
                         "translation": item.record[name] if item.ok else None,
                         "failed": failure is not None,
                         "reply": (failure.replies[-1] if failure and failure.replies else None)})
    # chrF of everything the model wrote, rejected replies included: how far the raw output is.
    raw = {}
    for lang in t.languages:
        pairs = [(r["translation"] if r["translation"] is not None else _strip_tags(r["reply"] or ""), r["reference"])
                 for r in rows if r["lang"] == lang and r["reference"].strip()]
        raw[lang] = chrf_by_language({lang: [p[0] for p in pairs]}, {lang: [p[1] for p in pairs]})[lang] if pairs else None
    # The floor: chrF of the untranslated English source against the references.
    copy = {lang: chrf_by_language({lang: [r["source"] for r in rows if r["lang"] == lang]},
                                   {lang: [r["reference"] for r in rows if r["lang"] == lang]})[lang]
            for lang in t.languages}
    result = {"settings": dataclasses.asdict(t), "chrf": chrf, "raw_chrf": raw, "copy_chrf": copy, "rows": rows, "ledger": ledger,
              "records_ok": {lang: sum(x.ok for x in translated if x.language == lang) for lang in t.languages},
              "records": t.records}
    cached.write_json(result)
    return result



def _strip_tags(reply: str) -> str:
    return reply.replace("<translation>", "").replace("</translation>", "").strip()



def translation_table(study: dict):
    """Per language: chrF of accepted translations, of all output, the copy floor, and counts."""
    import pandas as pd

    return pd.DataFrame({
        "chrF (accepted)": pd.Series(study["chrf"], dtype=float),
        "chrF (all output)": pd.Series(study["raw_chrf"], dtype=float),
        "chrF of the English source (floor)": pd.Series(study["copy_chrf"], dtype=float),
        "records translated": pd.Series(study["records_ok"]),
        "records": study["records"],
    }).round(1)


def read_records(path: str | Path, fields: Sequence[str] = ALPACA_FIELDS) -> list[dict[str, Any]]:
    """Records to translate from a JSONL file, kept as they are (other keys too); blank lines
    are skipped; a bad line, or a record whose ``fields`` are not all strings, raises
    ``ValueError`` naming file and line. Empty fields are allowed (they stay empty)."""
    records = []
    for lineno, record in iter_jsonl(path):
        if isinstance(record, JsonlError):
            raise record
        problem = field_problem(record, fields)
        if problem:
            raise ValueError(f"{path}:{lineno}: {problem}")
        records.append(record)
    return records


# --------------------------------------------------------------------------------------------
# `polyalpaca translate` (its options are parsed in polyalpaca.cli, with every other command)
# --------------------------------------------------------------------------------------------
def option_defaults() -> dict[str, dict[str, Any]]:
    """The command's defaults, read from ``EndpointConfig``, ``TranslationSettings`` and this
    module's constants: options for both backends ("common") and those of the "api" and of the
    "local" backend only."""
    endpoint, settings = EndpointConfig(), TranslationSettings()
    return {
        "common": {"source_language": SOURCE_LANGUAGE, "prompt_version": COMMAND_PROMPT_VERSION},
        "api": {"base_url": endpoint.base_url, "api_key_env": endpoint.api_key_env,
                "concurrency": endpoint.max_concurrency, "max_retries": endpoint.max_retries,
                "timeout": endpoint.timeout_s, "max_invalid": MAX_INVALID_REPLIES,
                "cache": None, "no_cache": False, "ledger": None},
        "local": {"max_new_tokens": COMMAND_MAX_NEW_TOKENS, "batch_size": settings.batch_size},
    }


def read_examples(path: Path) -> dict[str, list[list[str]]]:
    """Worked examples from a JSON file ``{lang: [[source, translation], ...]}``, checked."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{language: [[source, translation], ...]}}")
    for lang, pairs in data.items():
        if not isinstance(pairs, list):
            raise ValueError(f"{path}: {lang!r}: expected a list of [source, translation] pairs")
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
                raise ValueError(f"{path}: {lang!r}[{i}]: expected [source, translation], two non-empty strings")
    return data


def command_config(args: argparse.Namespace) -> tuple[TranslationSettings, dict[str, list[list[str]]]]:
    """The ``TranslationSettings`` of the command's options (its endpoint or local model, languages,
    prompt version, generation limits) and the worked examples of ``--examples``; ``ValueError``
    or ``OSError`` for bad ones."""
    languages = [code.strip() for code in args.languages.split(",") if code.strip()]
    check_targets(languages, args.source_language)
    endpoint = {"base_url": args.base_url, "api_key_env": args.api_key_env, "max_concurrency": args.concurrency} \
        if args.backend == "api" else {}
    settings = TranslationSettings(backend=args.backend, model=args.model, languages=languages,
                                   prompt_version=args.prompt_version, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, **endpoint)
    return settings, read_examples(args.examples) if args.examples else {}


def translate_command(args: argparse.Namespace, settings: TranslationSettings,
                      examples: dict[str, list[list[str]]] | None = None) -> int:
    """Run ``polyalpaca translate`` with its parsed options (every default filled in by the
    command line) and their ``command_config``. Returns the exit status: 0 all translated,
    1 some fields failed, 2 bad input or an endpoint that refuses every request."""
    try:
        records = read_records(args.input, ALPACA_FIELDS)
    except (OSError, ValueError) as exc:
        print(f"polyalpaca translate: error: {exc}", file=sys.stderr)
        return 2

    client: ChatClient | None = None
    try:
        if args.backend == "api":
            endpoint = EndpointConfig.of(settings, max_retries=args.max_retries, timeout_s=args.timeout)
            cache = None if args.no_cache else (args.cache or cache_dir() / "llm")
            client = ChatClient(endpoint, cache, progress=not args.no_progress)
            backend: TranslationBackend = ApiBackend(client, args.max_invalid)
        else:
            from .models import load_model, load_tokenizer

            backend = LocalBackend(load_model(args.model), load_tokenizer(args.model),
                                   progress=not args.no_progress)
        translated = translate_records(records, settings, backend, examples, args.source_language)
    except (EndpointError, ValueError) as exc:
        print(f"polyalpaca translate: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            if args.ledger:
                client.ledger.write_json(args.ledger)
            client.close()

    rows = [{**item.record, "language": item.language, "source_index": item.index}
            for item in translated if item.record is not None]
    _write_jsonl(args.output, rows)
    failures_path = args.output.with_name(args.output.name + ".failures.jsonl")
    failures = [vars(f) for item in translated for f in item.failures]
    if failures:
        _write_jsonl(failures_path, failures)
    elif failures_path.exists():
        failures_path.unlink()  # a stale list from an earlier run would mislead
    print(f"translated {len(rows)} of {len(translated)} (record, language) pairs into {', '.join(settings.languages)}; "
          f"{len(failures)} field(s) failed" + (f" (see {failures_path})" if failures else "") +
          f"; wrote {args.output}", file=sys.stderr)
    return 1 if failures else 0
