"""The paper's LLM judge: one query per (prompt, response), a 1-3 rating, MT-Bench single-answer style.

The judge is told the answer should be in the language of the question. The prompt is the
versioned data file ``polyalpaca/resources/prompts/judge_v1.txt``; the question and the response
sit inside ``<question>``/``<response>`` blocks, and any such tag inside them is escaped
(``<`` -> ``&lt;``, ``>`` -> ``&gt;``) so a response cannot close its block and speak to the judge.
The rating is parsed from ``Rating: [[N]]``; a reply without a single valid rating is asked
again and, after ``max_invalid_replies``, counted as *unparsed* (never scored). Raw replies
are kept on every record.

Pure functions turn records into the paper's numbers: ``gated_score`` (score x language_ok,
from ``polyalpaca.metrics``), ``gated_total`` (the one formula of a total, 0..3n, and its
normalised form 0..1), ``language_totals`` (per language) and ``robustness_gap`` (mean over
languages of the score before the gate minus after it). Language identification is not done here:
the gate is a boolean input (see ``polyalpaca.langid``).

The judging stage is here too: where the verdicts on a run's stored answers are kept
(``verdicts_of``, keyed by the answers, the judge model and its prompt) and the walk over stored
answers that fills them (``judge_stored``); the experiment (``grid.Experiment.judge_all``) only
hands it the answers. So is everything about the judge itself: whether one can run
(``judge_unavailable``), the stored rows (``verdict_rows``) and the summary users read
(``judge_summary``). The judge's settings are the profile's ``eval.judge``
(``config.JudgeSettings``: its endpoint and prompt version), used as they are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
import os
from collections import Counter
from typing import Callable, Iterable, Mapping, Sequence

from .config import JudgeSettings
from .data import TestPrompt
from .llm_client import ChatClient, ChatPrompt, ChatRequest, EndpointConfig, InvalidReply, load_prompt
from .metrics import gated_score
from .store import Cached, text_digest

RATING_SCALE = (1, 2, 3)
MAX_INVALID_REPLIES = 3  # replies asked for before an item is counted as unparsed (never scored)
_RATING = re.compile(r"Rating:\s*\[\[\s*(-?\d+)\s*\]\]", re.I)
_BLOCK_TAG = re.compile(r"<\s*/?\s*(?:question|response)\b[^<>]*>", re.I)


@dataclass
class JudgeItem:
    """One (prompt, response) pair; ``language`` is the language of the prompt."""

    prompt: str
    response: str
    language: str
    id: str | None = None


@dataclass
class JudgeRecord:
    """The verdict on item ``index``. ``status``: "scored" (``score`` in 1..3), "unparsed" (no
    valid rating in any reply) or "failed" (the endpoint could not be reached; see ``error``)."""

    index: int
    id: str | None
    language: str
    status: str
    score: int | None
    raw_replies: list[str]
    error: str | None = None
    from_cache: bool = False


@dataclass(frozen=True)
class LanguageTotal:
    """A language's judge total over its scored items: ``total`` in 0..3n, ``normalised`` in 0..1."""

    language: str
    n_scored: int
    n_unparsed: int
    n_failed: int
    total: int
    normalised: float


# --------------------------------------------------------------------------------------------
# Prompt and reply
# --------------------------------------------------------------------------------------------
def escape_block(text: str) -> str:
    """Neutralise ``<question>``, ``</question>``, ``<response>``, ``</response>`` (any case or
    spacing) so the text cannot end or open a block of the judge prompt; the rest is untouched."""
    return _BLOCK_TAG.sub(lambda m: m.group(0).replace("<", "&lt;").replace(">", "&gt;"), text)


def judge_messages(item: JudgeItem, prompt: ChatPrompt) -> list[dict[str, str]]:
    return prompt.render(question=escape_block(item.prompt), response=escape_block(item.response))


def parse_rating(reply: str) -> int:
    """The rating in a judge reply; ``InvalidReply`` when absent, out of 1..3 or ambiguous."""
    values = {int(v) for v in _RATING.findall(reply)}
    if not values:
        raise InvalidReply(f"no 'Rating: [[N]]' in the judge reply: {reply[-120:]!r}")
    if len(values) > 1:
        raise InvalidReply(f"several different ratings in the judge reply: {sorted(values)}")
    value = values.pop()
    if value not in RATING_SCALE:
        raise InvalidReply(f"rating {value} is outside {RATING_SCALE[0]}..{RATING_SCALE[-1]}")
    return value


# --------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------
def judge_responses(items: Sequence[JudgeItem], settings: JudgeSettings, client: ChatClient | None = None,
                    cache_dir: str | Path | None = None, progress: bool = True,
                    max_invalid_replies: int = MAX_INVALID_REPLIES) -> list[JudgeRecord]:
    """Judge every item (one query each) with the judge of ``settings`` (its endpoint and prompt
    version); records in input order.

    Uses ``client`` when given (its endpoint is used as is: a test's fast retries, say), else builds
    one for the settings' endpoint with the reply cache in ``cache_dir`` and closes it afterwards.
    """
    prompt = load_prompt(settings.prompt_version)
    own_client = client is None
    client = client or ChatClient(EndpointConfig.of(settings), cache_dir, progress=progress)
    try:
        requests = [ChatRequest(judge_messages(item, prompt), prompt.version, parse_rating) for item in items]
        results = client.complete_many(requests, max_invalid=max_invalid_replies, desc="judge")
    finally:
        if own_client:
            client.close()
    records = []
    for index, (item, result) in enumerate(zip(items, results, strict=True)):
        if result.ok:
            status = "scored"
        else:
            status = "unparsed" if result.failure == "invalid_reply" else "failed"
        records.append(JudgeRecord(index, item.id, item.language, status, result.value if result.ok else None,
                                   list(result.replies), result.error, result.from_cache))
    return records


# --------------------------------------------------------------------------------------------
# Scores (pure functions)
# --------------------------------------------------------------------------------------------
def gated_total(scores: Sequence[float]) -> tuple[float, float]:
    """The paper's per-language total of (gated) 1-3 ratings, 0..3n, and the total normalised by
    its maximum (3 x the number of scored items) so that sets of other sizes compare."""
    n = len(scores)
    total = sum(scores)
    return total, (total / (RATING_SCALE[-1] * n) if n else float("nan"))


def language_totals(records: Iterable[JudgeRecord],
                    language_ok: Sequence[bool] | None = None) -> dict[str, LanguageTotal]:
    """Per-language ``gated_total`` of the scores (gated when ``language_ok`` is given, aligned
    with ``records`` by position). Unparsed and failed items are counted apart and left out."""
    records = list(records)
    if language_ok is not None and len(language_ok) != len(records):
        raise ValueError(f"language_ok has {len(language_ok)} entries for {len(records)} records")
    scores: dict[str, list[int]] = {}
    missing: dict[str, Counter] = {}
    for position, record in enumerate(records):
        scores.setdefault(record.language, [])
        if record.status != "scored" or record.score is None:
            missing.setdefault(record.language, Counter())["unparsed" if record.status == "unparsed" else "failed"] += 1
            continue
        scores[record.language].append(
            record.score if language_ok is None else gated_score(record.score, language_ok[position]))
    out = {}
    for language, values in scores.items():
        total, normalised = gated_total(values)
        m = missing.get(language, Counter())
        out[language] = LanguageTotal(language, len(values), m["unparsed"], m["failed"], total, normalised)
    return out


def robustness_gap(before: Mapping[str, float], after: Mapping[str, float],
                   languages: Sequence[str] | None = None) -> float:
    """Mean over ``languages`` (default: all of ``before``) of the score before the language gate
    minus the score after it; the paper averages over its 6 seen languages. Bigger = more good
    answers in the wrong language."""
    languages = list(languages) if languages is not None else list(before)
    if not languages:
        raise ValueError("robustness_gap: no languages")
    for language in languages:
        for name, scores in (("before", before), ("after", after)):
            if language not in scores:
                raise KeyError(f"robustness_gap: no {name}-gate score for language {language!r}")
    return sum(before[lang] - after[lang] for lang in languages) / len(languages)


# --------------------------------------------------------------------------------------------
# Judging an experiment's stored answers
# --------------------------------------------------------------------------------------------
def judge_unavailable(settings: JudgeSettings, client: ChatClient | None = None) -> str:
    """Why no judge can run with these settings ('' when one can): no endpoint configured, or its
    key missing from the environment (a given ``client`` brings its own)."""
    if not (settings.base_url and settings.model):
        return ("No judge endpoint is configured (eval.judge.base_url is empty): answers are scored offline "
                "(likelihood of the reference, language gate, chrF).")
    if client is None and settings.api_key_env and not os.environ.get(settings.api_key_env):
        return (f"A judge is configured ({settings.model}) but the environment variable {settings.api_key_env} "
                "is not set: judging skipped, offline scores only.")
    return ""


def verdict_rows(records: Sequence[JudgeRecord], settings: JudgeSettings) -> list[dict]:
    """The stored form of a language's verdicts, raw replies included."""
    return [{"prompt_id": rec.id, "status": rec.status, "judge": rec.score, "judge_status": rec.status,
             "raw_replies": rec.raw_replies, "error": rec.error, "judge_model": settings.model,
             "prompt_version": settings.prompt_version} for rec in records]


def judge_summary(counts: Mapping[str, int], settings: JudgeSettings) -> dict:
    """Counts of scored, unparsed and failed verdicts, with the message users read."""
    scored, unparsed, failed = (counts.get(k, 0) for k in ("scored", "unparsed", "failed"))
    message = (f"Judged with {settings.model}: {scored} scored, {unparsed} unparsed (counted apart, never "
               f"scored), {failed} failed.")
    if failed:
        message += (f" The endpoint {settings.base_url} did not answer for {failed} answers after retries: "
                    "their languages are not stored; re-run to retry them.")
    return {"judged": scored + unparsed + failed, "scored": scored, "unparsed": unparsed, "failed": failed,
            "message": message}


def verdicts_of(settings: JudgeSettings, root: str | Path, model_key: str, lang: str, answers: Cached) -> Cached | None:
    """Where the judge's verdicts on a trained model's stored ``answers`` to ``lang``'s prompts are
    kept under the artefacts folder ``root`` (None without a judge), keyed by the answers, the
    responses, the judge model and its prompt."""
    if not (settings.base_url and settings.model):
        return None
    prompt = load_prompt(settings.prompt_version)
    responses = [r["response"] for r in answers.read_rows()] if answers.exists() else []
    return Cached(Path(root) / "judge" / model_key, lang, {
        "answers": answers.key, "responses": text_digest(responses), "judge_model": settings.model,
        "prompt_version": settings.prompt_version, "prompt_text": text_digest([prompt.system, prompt.user])})


def judge_stored(settings: JudgeSettings, root: str | Path, answers: Iterable[tuple[str, str, Cached]],
                 test_prompts: Callable[[str], list[TestPrompt]], client: ChatClient | None = None,
                 progress: bool = False) -> dict:
    """Rate stored answers, given as (model key, language, stored answers), with the configured
    judge (the paper's protocol; ``client``, when given, asks it) and keep the verdicts
    (``verdicts_of``); ``test_prompts`` gives a language's prompts. Replies are cached under
    ``root/llm-cache`` and stored raw. Without an endpoint, or without its key in the environment,
    nothing is judged and the message says so. Returns ``judge_summary``'s counts and message."""
    reason = judge_unavailable(settings, client)
    if reason:
        return {"judged": 0, "message": reason}
    counts = Counter()
    for model_key, lang, stored in answers:
        verdicts = verdicts_of(settings, root, model_key, lang, stored)
        if verdicts.exists():
            rows = verdicts.read_rows()
        else:
            prompts = {p.id: p for p in test_prompts(lang)}
            items = [JudgeItem(prompts[r["prompt_id"]].prompt, r["response"], lang, r["prompt_id"])
                     for r in stored.read_rows()]
            rows = verdict_rows(judge_responses(items, settings, client=client, cache_dir=Path(root) / "llm-cache",
                                                progress=progress), settings)
            # A language with failed items is not stored: a later run retries exactly those
            # (the replies received are in the client's cache and are not paid for twice).
            if not any(r["status"] == "failed" for r in rows):
                verdicts.write_rows(rows)
        counts.update(r["status"] for r in rows)
    return judge_summary(counts, settings)
