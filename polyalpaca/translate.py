"""Machine translation of Alpaca records (``instruction``, ``input``, ``output``).

Each non-empty field is one translation job. Before translation, spans that must not change
(fenced code, inline code, URLs, ``{placeholders}``, numbers, and our own delimiter tags) are
replaced by opaque markers ``⟦0⟧, ⟦1⟧, ...`` and put back afterwards. A reply is accepted only
if it holds exactly one ``<translation>...</translation>`` block, every marker exactly once, and
(for texts with enough letters) is detected by langdetect as the target language; otherwise it
is asked again (API backend) and finally reported as a failure, never written as a translation.

Two backends share one interface (``TranslationBackend.translate(jobs, prompt, config)``):

- ``ApiBackend``: any OpenAI-compatible endpoint through ``polyalpaca.llm_client.ChatClient``
  (concurrency, retries, resumable cache, ledger);
- ``LocalBackend``: a causal LM in this process via ``polyalpaca.generate.generate_texts``.
  Decoding is greedy, so a rejected reply would come back identical: one try per job.

``translate_records`` returns one ``TranslatedRecord`` per (language, record), languages in the
configured order and records in input order. ``translate_main`` is the ``polyalpaca translate``
command. ``chrf_by_language`` scores translations against references with sacrebleu's chrF.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from .langid import detect_language
from .llm_client import ChatClient, ChatPrompt, ChatRequest, EndpointConfig, InvalidReply, load_prompt

ALPACA_FIELDS = ("instruction", "input", "output")
LANGUAGE_NAMES = {
    "en": "English", "bg": "Bulgarian", "cs": "Czech", "de": "German", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "ru": "Russian", "zh": "Simplified Chinese", "bn": "Bengali",
    "no": "Norwegian Bokmål", "hi": "Hindi", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "pl": "Polish", "uk": "Ukrainian", "sv": "Swedish", "da": "Danish", "ja": "Japanese",
    "ko": "Korean", "ar": "Arabic", "tr": "Turkish",
}

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
_LETTER = re.compile(r"[^\W\d_]")
_LANGDETECT_LOCK = threading.Lock()  # langdetect's lazy global set-up is not thread-safe


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------
@dataclass
class TranslationConfig:
    """What to translate and how replies are checked."""

    languages: list[str]
    source_language: str = "en"
    fields: tuple[str, ...] = ALPACA_FIELDS
    prompt_version: str = "translate_v1"  # polyalpaca/resources/prompts/<version>.txt
    max_invalid_replies: int = 3  # API backend: replies asked for before a job is reported failed
    language_check_min_letters: int = 20  # shorter texts skip language ID (too unreliable)
    local_max_new_tokens: int = 512
    local_batch_size: int = 8

    def __post_init__(self) -> None:
        for code in [self.source_language, *self.languages]:
            if code not in LANGUAGE_NAMES:
                raise ValueError(f"TranslationConfig: unknown language code {code!r}; "
                                 f"known: {', '.join(sorted(LANGUAGE_NAMES))}")
        if self.source_language in self.languages:
            raise ValueError(f"TranslationConfig.languages contains the source language {self.source_language!r}")
        if not self.languages:
            raise ValueError("TranslationConfig.languages is empty")


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
    return protected if _LETTER.search(_MARKER.sub("", protected.text)) else None


@dataclass(frozen=True)
class TranslationJob:
    """One text to translate into one language (identical jobs are translated once)."""

    protected: Protected
    source_language: str
    target_language: str
    language_check_min_letters: int = 20

    def messages(self, prompt: ChatPrompt) -> list[dict[str, str]]:
        return prompt.render(source_name=LANGUAGE_NAMES[self.source_language], source_code=self.source_language,
                             target_name=LANGUAGE_NAMES[self.target_language], target_code=self.target_language,
                             text=self.protected.text)

    def check_reply(self, reply: str) -> str:
        """The restored translation, or ``InvalidReply`` (unparseable, markers changed, wrong language)."""
        blocks = _TRANSLATION.findall(reply)
        if len(blocks) != 1:
            raise InvalidReply(f"expected one <translation>...</translation> block, found {len(blocks)}: "
                               f"{reply[:80]!r}")
        body = blocks[0].strip()
        if not body:
            raise InvalidReply("empty <translation> block")
        restored = self.protected.restore(body)
        words = _MARKER.sub(" ", body)
        if len(_LETTER.findall(words)) >= self.language_check_min_letters:
            with _LANGDETECT_LOCK:
                detected = detect_language(words, seed=0)
            if detected != self.target_language:
                raise InvalidReply(f"reply is in {detected!r}, expected {self.target_language!r}")
        return restored


@dataclass
class JobOutcome:
    """A job's translation (``text``) or, when it failed, ``error`` and the rejected replies."""

    text: str | None
    error: str | None = None
    replies: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------
class TranslationBackend(Protocol):
    def translate(self, jobs: Sequence[TranslationJob], prompt: ChatPrompt,
                  config: TranslationConfig) -> list[JobOutcome]:
        """One outcome per job, in order."""
        ...


class ApiBackend:
    """Translate through an OpenAI-compatible endpoint (``ChatClient``)."""

    def __init__(self, client: ChatClient):
        self.client = client

    def translate(self, jobs: Sequence[TranslationJob], prompt: ChatPrompt,
                  config: TranslationConfig) -> list[JobOutcome]:
        requests = [ChatRequest(job.messages(prompt), prompt.version, job.check_reply) for job in jobs]
        results = self.client.complete_many(requests, max_invalid=config.max_invalid_replies, desc="translate")
        return [JobOutcome(r.value, None, r.replies) if r.ok else JobOutcome(None, r.error, r.replies)
                for r in results]


class LocalBackend:
    """Translate with a causal LM in this process (``generate_texts``, greedy, one try per job)."""

    def __init__(self, model: Any, tokenizer: Any, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress

    def render(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template when it has one, else the messages' text in order."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def translate(self, jobs: Sequence[TranslationJob], prompt: ChatPrompt,
                  config: TranslationConfig) -> list[JobOutcome]:
        from tqdm.auto import tqdm

        from .generate import DecodingConfig, generate_texts  # imports torch: only when used

        decoding = DecodingConfig(max_new_tokens=config.local_max_new_tokens,
                                  batch_size=config.local_batch_size, stop_strings=())
        prompts = [self.render(job.messages(prompt)) for job in jobs]
        with tqdm(total=len(prompts), desc="translate (local)", disable=not self.progress or not prompts,
                  mininterval=5.0) as bar:
            replies = generate_texts(self.model, self.tokenizer, prompts, decoding, on_batch=bar.update)
        outcomes = []
        for job, reply in zip(jobs, replies):
            try:
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


def translate_records(records: Sequence[Mapping[str, Any]], config: TranslationConfig,
                      backend: TranslationBackend) -> list[TranslatedRecord]:
    """Translate every record into every language of ``config``.

    Returns ``len(config.languages) * len(records)`` items: for each language (config order),
    each record (input order). Empty fields stay empty; fields with nothing but protected spans
    are copied; identical texts are translated once per language.
    """
    for index, record in enumerate(records):
        problem = field_problem(record, config.fields)
        if problem:
            raise ValueError(f"record {index}: {problem}")
    prompt = load_prompt(config.prompt_version)
    jobs: dict[tuple[str, str], TranslationJob] = {}
    for language in config.languages:
        for record in records:
            for name in config.fields:
                protected = to_translate(record[name])
                if protected is not None:
                    jobs.setdefault((language, protected.text), TranslationJob(
                        protected, config.source_language, language, config.language_check_min_letters))
    job_list = list(jobs.values())
    outcomes = dict(zip(jobs, backend.translate(job_list, prompt, config))) if job_list else {}

    translated = []
    for language in config.languages:
        for index, record in enumerate(records):
            new, failures = dict(record), []
            for name in config.fields:
                text = record[name]
                protected = to_translate(text)
                if protected is None:
                    continue
                outcome = outcomes[(language, protected.text)]
                if outcome.text is None:
                    failures.append(FieldFailure(index, language, name, outcome.error or "failed", outcome.replies))
                else:
                    lead, trail = text[:len(text) - len(text.lstrip())], text[len(text.rstrip()):]
                    new[name] = lead + outcome.text + trail
            translated.append(TranslatedRecord(index, language, None if failures else new, failures))
    return translated


# --------------------------------------------------------------------------------------------
# chrF
# --------------------------------------------------------------------------------------------
def chrf_by_language(hypotheses: Mapping[str, Sequence[str]],
                     references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Corpus chrF (sacrebleu, 0..100) per language; segments are aligned by position."""
    from sacrebleu.metrics import CHRF

    scores = {}
    for language, hyps in hypotheses.items():
        if language not in references:
            raise KeyError(f"chrF: no references for language {language!r}")
        refs = references[language]
        if len(hyps) != len(refs):
            raise ValueError(f"chrF {language}: {len(hyps)} hypotheses but {len(refs)} references")
        scores[language] = CHRF().corpus_score(list(hyps), [list(refs)]).score
    return scores


def chrf_for_translations(translated: Sequence[TranslatedRecord],
                          references: Mapping[str, Sequence[Mapping[str, Any]]],
                          fields: Sequence[str] = ALPACA_FIELDS) -> dict[str, float]:
    """chrF per language of translated records against reference records with the same index
    (e.g. the embedded ``train/{lang}.jsonl``). Failed records and fields empty in the
    reference are left out."""
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
# Command line
# --------------------------------------------------------------------------------------------
def read_jsonl(path: str | Path, fields: Sequence[str] = ALPACA_FIELDS) -> list[dict[str, Any]]:
    """Records of a JSONL file; blank lines are skipped, bad lines raise naming file and line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            problem = field_problem(record, fields)
            if problem:
                raise ValueError(f"{path}:{lineno}: {problem}")
            records.append(record)
    return records


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write atomically: a half-written output never replaces a good one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyalpaca translate",
        description="Translate Alpaca records (instruction, input, output) into other languages. "
                    "Writes one line per (language, record), languages in the given order, records in "
                    "input order, with 'language' and 'source_index' added. Fields that could not be "
                    "translated are listed in OUTPUT.failures.jsonl and their records left out; the exit "
                    "status is then 1.")
    parser.add_argument("--input", required=True, type=Path, help="JSONL of English records")
    parser.add_argument("--output", required=True, type=Path, help="JSONL to write the translations to")
    parser.add_argument("--languages", required=True,
                        help="comma-separated target language codes, e.g. bg,cs,de,es,fi,fr,ru,zh")
    parser.add_argument("--source-language", default="en", help="language of the input (default: en)")
    parser.add_argument("--backend", choices=("api", "local"), default="api",
                        help="api: an OpenAI-compatible endpoint; local: a causal LM in this process "
                             "(default: api)")
    parser.add_argument("--model", required=True,
                        help="api: the endpoint's model name; local: a model spec for polyalpaca.models "
                             "(Hub id, folder, pypi:gemma-3-270m, tiny-random-gemma3)")
    parser.add_argument("--base-url", default="https://api.openai.com/v1",
                        help="api only: the endpoint's base URL (default: %(default)s)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="api only: NAME of the environment variable holding the key; '' for none "
                             "(default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="api only: requests in flight (default: 8)")
    parser.add_argument("--max-retries", type=int, default=6,
                        help="api only: retries per request on 429, 5xx, timeouts (default: 6)")
    parser.add_argument("--timeout", type=float, default=60.0, help="api only: seconds per request (default: 60)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="api only: folder of the reply cache that makes reruns free and interrupted "
                             "runs resumable (default: the polyalpaca cache folder, llm/)")
    parser.add_argument("--no-cache", action="store_true", help="api only: do not read or write a cache")
    parser.add_argument("--ledger", type=Path, default=None,
                        help="api only: write request/retry/cache/token/cost counts to this JSON file")
    parser.add_argument("--prompt-version", default="translate_v1",
                        help="prompt file in polyalpaca/resources/prompts (default: %(default)s)")
    parser.add_argument("--max-invalid", type=int, default=3,
                        help="api only: rejected replies before a field is reported failed (default: 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def translate_main(argv: Sequence[str] | None = None) -> int:
    """``polyalpaca translate``: returns the exit status (0 all translated, 1 some failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    languages = [code.strip() for code in args.languages.split(",") if code.strip()]
    try:
        config = TranslationConfig(languages=languages, source_language=args.source_language,
                                   prompt_version=args.prompt_version, max_invalid_replies=args.max_invalid)
    except ValueError as exc:
        parser.error(str(exc))
    if args.backend == "local":
        given = [flag for flag, value in (("--cache", args.cache), ("--ledger", args.ledger),
                                          ("--no-cache", args.no_cache or None)) if value is not None]
        if given:
            parser.error(f"{', '.join(given)} only apply to --backend api")
    records = read_jsonl(args.input, config.fields)

    client: ChatClient | None = None
    if args.backend == "api":
        from .paths import cache_dir

        endpoint = EndpointConfig(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                                  max_concurrency=args.concurrency, max_retries=args.max_retries,
                                  timeout_s=args.timeout)
        cache = None if args.no_cache else (args.cache or cache_dir() / "llm")
        client = ChatClient(endpoint, cache, progress=not args.no_progress)
        backend: TranslationBackend = ApiBackend(client)
    else:
        from .models import load_model, load_tokenizer

        backend = LocalBackend(load_model(args.model), load_tokenizer(args.model), progress=not args.no_progress)
    try:
        translated = translate_records(records, config, backend)
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
    print(f"translated {len(rows)} of {len(translated)} (record, language) pairs into {', '.join(languages)}; "
          f"{len(failures)} field(s) failed" + (f" (see {failures_path})" if failures else "") +
          f"; wrote {args.output}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(translate_main())
