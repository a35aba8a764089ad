"""The data layer: instruction records and test prompts, from our embedded set, from Alpaca
files, from the Hugging Face Hub, or from the paper's test files.

Every loader validates each record and stops with a ``DataError`` naming the file, line and
field; with ``skip_bad=True`` it keeps going and returns what it skipped, with reasons.
"""
from __future__ import annotations

import hashlib
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .files import JsonlError, atomic_write_bytes, atomic_write_text, iter_jsonl
from .files import read_jsonl, write_jsonl  # noqa: F401 -- re-exported: data.read_jsonl, data.write_jsonl
from .paths import DATA_DIR, RESOURCES_DIR, cache_dir

#: Every language code the project knows (ISO 639-1), with the name prompts use for it.
LANGUAGES = {
    "en": "English", "bg": "Bulgarian", "cs": "Czech", "de": "German", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "ru": "Russian", "zh": "Simplified Chinese", "bn": "Bengali",
    "no": "Norwegian Bokmål", "hi": "Hindi", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "pl": "Polish", "uk": "Ukrainian", "sv": "Swedish", "da": "Danish", "ja": "Japanese",
    "ko": "Korean", "ar": "Arabic", "tr": "Turkish",
}
EMBEDDED_TRAIN_LANGUAGES = ["en", "bg", "cs", "de", "es", "fi", "fr", "ru", "zh"]
EMBEDDED_TEST_LANGUAGES = EMBEDDED_TRAIN_LANGUAGES + ["bn", "no"]
# Pinned to a commit, so the file behind the URL cannot change under us.
PAPER_TEST_COMMIT = "ca5970bf76c11205da8f748bf623808a0141facc"
PAPER_TEST_URL = ("https://raw.githubusercontent.com/hplt-project/monolingual-multilingual-instruction-tuning/"
                  f"{PAPER_TEST_COMMIT}/test-data/test_{{lang}}.jsonl")


class DataError(ValueError):
    """A bad record: says which file, line and field."""

    def __init__(self, path: str | Path, line: int | None, field_name: str | None, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field_name, problem
        where = f"{path}" + (f", line {line}" if line is not None else "") + (
            f", field {field_name!r}" if field_name else "")
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Record:
    """One instruction-tuning example."""

    id: str
    lang: str
    instruction: str
    input: str
    output: str
    category: str = ""


@dataclass(frozen=True)
class TestPrompt:
    """One evaluation prompt; ``reference`` and ``answer`` are optional (the paper's files have neither)."""

    __test__ = False  # not a pytest test class

    id: str
    lang: str
    prompt: str
    reference: str = ""
    answer: str | None = None
    answer_kind: str | None = None
    answer_aliases: tuple[str, ...] = ()


@dataclass
class Skipped:
    path: str
    line: int | None
    field: str | None
    problem: str


@dataclass
class LoadResult:
    items: list
    skipped: list[Skipped] = field(default_factory=list)


def check_language(lang: str, where: str = "language") -> str:
    if lang not in LANGUAGES:
        raise DataError(where, None, "lang", f"unknown language code {lang!r}; known: {', '.join(LANGUAGES)}")
    return lang


def _iter_json_rows(path: Path) -> Iterable[tuple[int, Any]]:
    """Yield (line number, parsed object or DataError) from a JSONL file or a JSON array file."""
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, exc.lineno, None, f"invalid JSON: {exc.msg}") from None
            # A JSON array has no per-record lines; report the record's position (1-based) as its line.
            yield from ((i + 1, row) for i, row in enumerate(rows))
            return
    for number, row in iter_jsonl(path):
        if isinstance(row, JsonlError):
            row = DataError(path, number, None, f"invalid JSON: {row.msg} (column {row.column})")
        yield number, row


def _require_str(row: dict, name: str, path, line, *, required: bool, allow_empty: bool = False) -> str:
    if name not in row or row[name] is None:
        if required:
            raise DataError(path, line, name, "missing field")
        return ""
    value = row[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "id":
        value = str(value)
    if not isinstance(value, str):
        raise DataError(path, line, name, f"expected a string, got {type(value).__name__}")
    if required and not allow_empty and not value.strip():
        raise DataError(path, line, name, "empty field")
    return value


def _load_rows(path: Path, parse, skip_bad: bool) -> LoadResult:
    result = LoadResult(items=[])
    seen: set[str] = set()
    for line, row in _iter_json_rows(path):
        try:
            if isinstance(row, DataError):
                raise row
            if not isinstance(row, dict):
                raise DataError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
            item = parse(row, line)
            if item.id in seen:
                raise DataError(path, line, "id", f"duplicate id {item.id!r}")
            seen.add(item.id)
            result.items.append(item)
        except DataError as exc:
            if not skip_bad:
                raise
            result.skipped.append(Skipped(exc.path, exc.line, exc.field, exc.problem))
    return result


def read_alpaca_file(path: str | Path, lang: str, skip_bad: bool = False) -> LoadResult:
    """Read Alpaca records (``instruction``, optional ``input``, ``output``; ``id`` optional) from
    JSON or JSONL. Records without an id get ``{lang}-{line}``."""
    path = Path(path)
    check_language(lang, str(path))

    def parse(row: dict, line: int) -> Record:
        rid = _require_str(row, "id", path, line, required=False) or f"{lang}-{line:06d}"
        if "lang" in row and row["lang"] != lang:
            raise DataError(path, line, "lang", f"record says {row['lang']!r} but the file is {lang!r}")
        return Record(
            id=rid, lang=lang,
            instruction=_require_str(row, "instruction", path, line, required=True),
            input=_require_str(row, "input", path, line, required=False),
            output=_require_str(row, "output", path, line, required=True),
            category=_require_str(row, "category", path, line, required=False),
        )

    return _load_rows(path, parse, skip_bad)


def read_test_file(path: str | Path, lang: str, skip_bad: bool = False) -> LoadResult:
    """Read test prompts: the paper's format (``id``, ``prompt``) or ours (plus ``reference``,
    ``answer``, ``answer_kind``, ``answer_aliases``)."""
    path = Path(path)
    check_language(lang, str(path))

    def parse(row: dict, line: int) -> TestPrompt:
        aliases = row.get("answer_aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise DataError(path, line, "answer_aliases", "expected a list of strings")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise DataError(path, line, "answer", f"expected a string, got {type(answer).__name__}")
        kind = row.get("answer_kind")
        if answer is not None and kind not in ("number", "name"):
            raise DataError(path, line, "answer_kind", f"expected 'number' or 'name', got {kind!r}")
        return TestPrompt(
            id=_require_str(row, "id", path, line, required=True),
            lang=lang,
            prompt=_require_str(row, "prompt", path, line, required=True),
            reference=_require_str(row, "reference", path, line, required=False),
            answer=None if answer is None else str(answer),
            answer_kind=kind if answer is not None else None,
            answer_aliases=tuple(aliases),
        )

    return _load_rows(path, parse, skip_bad)


# --- embedded data -------------------------------------------------------------------------

def embedded_train(lang: str, skip_bad: bool = False) -> LoadResult:
    return read_alpaca_file(DATA_DIR / "train" / f"{lang}.jsonl", lang, skip_bad)


def embedded_test(lang: str, skip_bad: bool = False) -> LoadResult:
    return read_test_file(DATA_DIR / "test" / f"{lang}.jsonl", lang, skip_bad)


# --- Hugging Face Hub ----------------------------------------------------------------------

def hub_dataset_name(lang: str, english: str = "yahma/alpaca-cleaned",
                     pattern: str = "pinzhenchen/alpaca-cleaned-{lang}") -> str:
    return english if lang == "en" else pattern.format(lang=lang)


def load_hub_alpaca(name_or_folder: str, lang: str, split: str = "train", skip_bad: bool = False,
                    revision: str | None = None) -> LoadResult:
    """Load an Alpaca-format data set from the Hub (``yahma/alpaca-cleaned``,
    ``pinzhenchen/alpaca-cleaned-{lang}``) or a local folder/file of the same schema.
    Ids are the row index, so translations stay aligned with English."""
    from datasets import load_dataset

    check_language(lang, name_or_folder)
    path = Path(name_or_folder)
    if path.is_file():
        ds = load_dataset("json", data_files=str(path), split=split)
    else:
        ds = load_dataset(name_or_folder, split=split, revision=revision)
    result = LoadResult(items=[])
    for index, row in enumerate(ds):
        line = index + 1
        try:
            result.items.append(Record(
                id=f"alpaca-{index:05d}", lang=lang,
                instruction=_require_str(row, "instruction", name_or_folder, line, required=True),
                input=_require_str(row, "input", name_or_folder, line, required=False),
                output=_require_str(row, "output", name_or_folder, line, required=True),
            ))
        except DataError as exc:
            if not skip_bad:
                raise
            result.skipped.append(Skipped(exc.path, exc.line, exc.field, exc.problem))
    return result


# --- the paper's test files ----------------------------------------------------------------

def _pinned_checksums() -> dict[str, str]:
    path = RESOURCES_DIR / "paper_test_sha256.json"
    return json.loads(path.read_text()) if path.exists() else {}


def fetch_paper_test_file(lang: str, url_pattern: str = PAPER_TEST_URL, cache: Path | None = None,
                          sha256: str | None = None) -> Path:
    """Download ``test_{lang}.jsonl`` once into the cache and check its sha256.

    The expected checksum comes from ``sha256`` or ``resources/paper_test_sha256.json``. When
    neither pins one, the first download's checksum is recorded next to the file and later
    reads must match it (trust on first use)."""
    check_language(lang, "paper test set")
    folder = (cache or cache_dir()) / "paper-test-data"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"test_{lang}.jsonl"
    expected = sha256 or _pinned_checksums().get(lang)
    record = target.with_suffix(".sha256")
    if not target.exists():
        url = url_pattern.format(lang=lang)
        with urllib.request.urlopen(url, timeout=60) as response:
            atomic_write_bytes(target, response.read())
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if expected is None and record.exists():
        expected = record.read_text().strip()
    if expected is not None and digest != expected:
        raise DataError(target, None, None, f"sha256 {digest} does not match the pinned {expected}")
    if not record.exists():
        atomic_write_text(record, digest + "\n")
    return target


def load_test_prompts(lang: str, source: str = "embedded", skip_bad: bool = False) -> LoadResult:
    """Test prompts for one language from ``embedded``, ``paper-url`` or a folder of ``test_{lang}.jsonl``."""
    if source == "embedded":
        return embedded_test(lang, skip_bad)
    if source == "paper-url":
        return read_test_file(fetch_paper_test_file(lang), lang, skip_bad)
    path = Path(source) / f"test_{lang}.jsonl"
    if not path.is_file():
        problem = "no such folder" if not Path(source).is_dir() else f"the folder has no test_{lang}.jsonl"
        raise DataError(path, None, None, f"{problem} (data.test_source needs one test_{{lang}}.jsonl per test "
                        "language, one JSON object a line with 'id' and 'prompt')")
    return read_test_file(path, lang, skip_bad)


def load_training_records(lang: str, source: str = "embedded", *, hub_english: str = "yahma/alpaca-cleaned",
                          hub_pattern: str = "pinzhenchen/alpaca-cleaned-{lang}", files_pattern: str = "",
                          skip_bad: bool = False) -> LoadResult:
    """Training records for one language from ``embedded``, ``hub`` or ``files`` (``files_pattern``)."""
    if source == "embedded":
        return embedded_train(lang, skip_bad)
    if source == "hub":
        return load_hub_alpaca(hub_dataset_name(lang, hub_english, hub_pattern), lang, skip_bad=skip_bad)
    if source == "files":
        if not files_pattern:
            raise ValueError("data.source = 'files' needs data.files_pattern, e.g. 'data/alpaca_{lang}.json'")
        return read_alpaca_file(files_pattern.format(lang=lang), lang, skip_bad)
    raise ValueError(f"unknown data source {source!r}: expected embedded, hub or files")
