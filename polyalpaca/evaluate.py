"""Answering the test prompts and scoring the answers without a judge.

Offline scores (no endpoint needed): the language gate (response level and line level), the
accuracy on prompts with a verifiable answer, and chrF against our reference answers. chrF and
accuracy are gated: an answer in the wrong language scores 0, as in the paper's protocol.

The evaluation stage of a grid is ``Evaluation``: for each trained run (a ``design.GridRun``) and
test language, where its answers, scores and likelihood scores are stored (each under a cache key
of everything that made it, ``polyalpaca.store``), which of them a run computes, and the run that
answers, scores and likelihood-scores what is missing, then removes a full fine-tune's weights
once its results are stored. The experiment (``grid.Experiment``) gives it the profile, the
artefacts folder and the few things only the experiment knows (the test prompts it loaded, the
trained model's folder, the grid's runs).
"""
from __future__ import annotations

import dataclasses
import re
import re as _re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import design, store
from .config import Profile, keyed_settings
from .data import TestPrompt, load_test_prompts
from .design import GridRun
from .langid import language_gate
from .metrics import gated_score, sentence_chrf
from .progress import Progress
from .prompts import PromptTemplate
from .store import Cached, text_digest

# generate, models, likelihood, serving (torch) and judge (openai) are imported where answers are
# generated, models loaded or verdicts read: scoring stored answers needs no model, and the
# experiment, which holds an Evaluation, stays light for planning and `polyalpaca check`.

# The version of the offline scorer (gate rules, echo and loop detection, chrF, accuracy): bump it
# when scoring changes, and every stored score is recomputed from the stored answers.
SCORER_VERSION = 2


def answer_prompts(model, tokenizer, template: PromptTemplate, prompts: list[TestPrompt],
                   decoding, on_batch=None) -> list[str]:
    """Generate one answer per prompt (the prompt goes in the template's instruction slot)."""
    from .generate import generate_texts

    texts = [template.build(p.prompt) for p in prompts]
    outputs = generate_texts(model, tokenizer, texts, decoding, on_batch=on_batch)
    return [template.extract_response(template.response_marker + "\n" + out) for out in outputs]


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", text)


def verifiable_correct(prompt: TestPrompt, response: str) -> bool | None:
    """Whether the response states the prompt's short answer (None when it has none).

    Numbers must appear as a whole number (not inside a longer one); names match
    case-insensitively, with any listed alias accepted."""
    if prompt.answer is None:
        return None
    text = _normalise(response).replace(",", "").replace("\u00a0", "")
    if prompt.answer_kind == "number":
        target = prompt.answer.replace(",", "")
        return re.search(rf"(?<![\d.]){re.escape(target)}(?![\d]|\.\d)", text) is not None
    names = [prompt.answer, *prompt.answer_aliases]
    return any(_normalise(n) in text for n in names)


@dataclass
class ScoredAnswer:
    run: str
    prompt_id: str
    lang: str
    prompt: str
    response: str
    detected: str | None
    gate: bool
    gate_reason: str
    line_pass: bool
    correct: bool | None
    chrf: float
    gated_chrf: float

    def to_dict(self) -> dict:
        return asdict(self)


def score_answers(prompts: list[TestPrompt], responses: list[str], seed: int = 0,
                  candidates: tuple[str, ...] | None = None) -> list[dict]:
    """Score stored answers (rows for the artefact store); the gate detects languages among
    ``candidates`` when given."""
    return [score_answer("", p, r, seed, candidates).to_dict() for p, r in zip(prompts, responses)]


def score_answer(run: str, prompt: TestPrompt, response: str, seed: int = 0,
                 candidates: tuple[str, ...] | None = None) -> ScoredAnswer:
    gate = language_gate(prompt.prompt, response, prompt.lang, seed, candidates)
    similarity = sentence_chrf(response, prompt.reference)
    correct = verifiable_correct(prompt, response)
    return ScoredAnswer(
        run=run, prompt_id=prompt.id, lang=prompt.lang, prompt=prompt.prompt, response=response,
        detected=gate.detected, gate=gate.passed, gate_reason=gate.reason, line_pass=gate.line_pass,
        correct=None if correct is None else bool(correct and gate.passed),
        chrf=round(similarity, 3), gated_chrf=round(gated_score(similarity, gate.passed), 3),
    )


def worked_scores(prompt: TestPrompt, english: TestPrompt, seed: int = 0) -> list[dict]:
    """Each offline score on a few answers to one prompt, for the evaluation chapter: a short
    correct answer (the reference's first sentence), a long answer made of the reference's words in
    another order, the same correct answer in English, and the question repeated. chrF rewards
    length and copied words; the gate catches the English answer and the echo; the likelihood
    score does not look at generated answers at all."""
    first = _re.split(r"(?<=[.!?。！？])\s*", prompt.reference.strip())[0]
    words = prompt.reference.split()
    shuffled = " ".join(words[len(words) // 2:] + words[:len(words) // 2])
    candidates = [("short correct answer", first), ("the reference's words, halves swapped (no sense)", shuffled),
                  ("the correct answer, in English", _re.split(r"(?<=[.!?])\s*", english.reference.strip())[0]),
                  ("the question, repeated", f"{prompt.prompt} {prompt.prompt}")]
    rows = []
    for label, text in candidates:
        s = score_answer("example", prompt, text, seed)
        rows.append({"answer": label, "text": text, "characters": len(text), "chrF": round(s.chrf, 1),
                     "gate": s.gate_reason, "gated chrF": round(s.gated_chrf, 1)})
    return rows


# --- the evaluation stage of a grid -------------------------------------------------------------

@dataclass
class Evaluation:
    """The evaluation stage of one profile whose artefacts are under ``root``."""

    profile: Profile
    root: Path
    test_prompts: Callable[[str], list[TestPrompt]]  # a language's test prompts, as the experiment loaded them
    model_folder: Callable[[GridRun], Path]  # a trained run's model folder (retrained when it was not kept)
    trained_runs: Callable[[], list[GridRun]]  # the grid's trained runs (to see which share a model)

    # --- where results are stored, and which a run computes --------------------------------------
    def answers_of(self, run: GridRun, lang: str) -> Cached:
        """Where ``run``'s answers to ``lang``'s test prompts are stored, keyed by what makes them."""
        prompts = self.test_prompts(lang)
        return Cached(self.root / "answers" / run.model_key, lang, {
            "model": run.model_key, "base_model": run.model,
            "decoding": keyed_settings(design.decoding(self.profile, run.method)),
            "template": dataclasses.asdict(design.decoding_template(self.profile, run.method)),
            "prompt_ids": [p.id for p in prompts], "prompts": text_digest(p.prompt for p in prompts),
            "backend": self.backend_identity(run)})

    def backend_identity(self, run: GridRun) -> dict:
        """What answers a run's prompts, as its answers' key records it."""
        e = self.profile.eval
        if e.backend == "server":
            return {"backend": "server", "model": e.server.model or run.model, "lora_adapters": e.server.lora_adapters}
        # Greedy answers depend on the output layer's float rounding (models.weight_first_output).
        return {"backend": "local", "output_layer": "weight-first on CPU"}

    def scores_of(self, run: GridRun, lang: str, answers: Cached) -> Cached:
        """Where the offline scores of ``answers`` are stored."""
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

    def english_references(self) -> list[TestPrompt]:
        """The English test prompts that have a reference answer (every one of the source's)."""
        d = self.profile.data
        res = load_test_prompts("en", d.test_source, d.skip_bad_records)
        return [p for p in res.items if p.reference]

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
            "model": run.model_key, "base_model": run.model,
            "template": dataclasses.asdict(design.train_template(self.profile, run.method)),
            "pairs": text_digest(t for pair in pairs for t in pair), "max_answer_tokens": e.likelihood_max_tokens,
            "softmax": "exact, full vocabulary", "version": 2})

    def generates(self, run: GridRun, lang: str) -> bool:
        """Whether ``run`` answers ``lang``'s prompts (``eval.english_answers``: with first-seed, the
        models of later seeds only score the English references; ``eval.dose_answers`` false: the
        dose runs only score the references)."""
        if run.recipe == "dose" and not self.profile.eval.dose_answers:
            return False
        first = self.profile.grid.seeds[0] if self.profile.grid.seeds else None
        return not (lang == "en" and self.profile.eval.english_answers == "first-seed"
                    and run.seed is not None and run.seed != first)

    def results_stored(self, run: GridRun) -> bool:
        """Whether the answers, scores and likelihoods of every test language of ``run`` are stored."""
        for lang in run.eval_languages:
            answers, lik = self.answers_of(run, lang), self.likelihood_of(run, lang)
            answered = not self.generates(run, lang) or (answers.exists() and self.scores_of(run, lang, answers).exists())
            if not (answered and (lik is None or lik.exists())):
                return False
        return True

    # --- computing them -------------------------------------------------------------------------
    def load_model(self, run: GridRun):
        """The model and tokenizer that answer for ``run`` (a fresh copy of the base model for the
        untuned run)."""
        from .models import load_model, load_tokenizer, load_trained

        tokenizer = load_tokenizer(run.model)
        if run.method == design.BASE:
            return load_model(run.model), tokenizer
        return load_trained(self.model_folder(run), run.model), tokenizer

    def answer(self, run: GridRun, model, tokenizer, prompts: list[TestPrompt]) -> list[str]:
        """``run``'s answers to ``prompts``: generated with the loaded model, or requested from the
        server (``eval.backend``), which serves every trained run under its model key (a LoRA
        adapter or a full model)."""
        e, decoding = self.profile.eval, design.decoding(self.profile, run.method)
        template = design.decoding_template(self.profile, run.method)
        if e.backend == "server":
            from .serving import answer_prompts_via_server

            adapter = None if run.method == design.BASE else run.model_key
            return answer_prompts_via_server(prompts, template, decoding, e.server, adapter, self.root / "llm-cache",
                                             base_model=run.model)
        return answer_prompts(model, tokenizer, template, prompts, decoding)

    def evaluate(self, run: GridRun) -> dict:
        """Answer, score and likelihood-score every test language of a trained ``run``. Everything
        stored under the same keys is reused; returns what was computed (``generated`` and
        ``likelihood_scored`` languages, ``loaded`` whether a model was loaded)."""
        from .likelihood import answer_likelihoods

        e = self.profile.eval
        work = {lang: (self.answers_of(run, lang), self.likelihood_of(run, lang)) for lang in run.eval_languages}
        need_gen = [lang for lang, (a, _) in work.items() if self.generates(run, lang) and not a.exists()]
        need_lik = [lang for lang, (_, l) in work.items() if l is not None and not l.exists()]
        loaded = bool(need_lik) or (bool(need_gen) and e.backend == "local")
        model = tokenizer = None
        if loaded:
            model, tokenizer = self.load_model(run)
        for lang in need_gen:
            prompts = self.test_prompts(lang)
            responses = self.answer(run, model, tokenizer, prompts)
            work[lang][0].write_rows({"prompt_id": p.id, "lang": lang, "response": r} for p, r in zip(prompts, responses))
        for lang in need_lik:
            pairs = self.likelihood_pairs(lang)
            scored = answer_likelihoods(model, tokenizer, design.train_template(self.profile, run.method),
                                        [(p, r) for _, p, r in pairs], e.likelihood_batch_size, e.likelihood_max_tokens)
            work[lang][1].write_rows({"prompt_id": pid, "logprob": s.logprob, "tokens": s.tokens, "bytes": s.bytes}
                                     for (pid, _, _), s in zip(pairs, scored))
        del model
        for lang, (answers, _) in work.items():
            scores = self.scores_of(run, lang, answers)
            if answers.exists() and not scores.exists():
                rows = answers.read_rows()
                prompts = {p.id: p for p in self.test_prompts(lang)}
                scores.write_rows(score_answers([prompts[r["prompt_id"]] for r in rows], [r["response"] for r in rows],
                                                e.langid_seed, self.gate_candidates()))
        self.release_model(run)
        return {"generated": need_gen, "likelihood_scored": need_lik, "loaded": loaded}

    def evaluate_all(self, runs: list[GridRun]) -> None:
        """Evaluate every one of the trained ``runs``, reporting progress."""
        progress = Progress(len(runs), "evaluation")
        for run in runs:
            done = self.evaluate(run)
            cached = not (done["generated"] or done["likelihood_scored"])
            gates = self.run_answers(run)["gate"].dropna().astype(float)
            answered = f"gate pass {gates.mean():.2f}" if len(gates) else "likelihood only"
            progress.step(f"{run.label}: {len(run.eval_languages)} languages, {answered}"
                          + (" (stored)" if cached else ""), cached=cached)

    def release_model(self, run: GridRun) -> bool:
        """Remove a fully fine-tuned model's weights once every run that shares it has its answers,
        scores and likelihoods stored, unless the profile keeps them (``storage.keep_full_models``)
        or a server reads them (``eval.backend = server``). Returns whether it removed them."""
        run_dir = store.run_folder(self.root, run.model_key)
        if (run.method != "full" or self.profile.storage.keep_full_models or self.profile.eval.backend != "local"
                or not store.model_folder(run_dir).exists()):
            return False
        sharing = [run] + [r for r in self.trained_runs() if r.model_key == run.model_key]
        if not all(self.results_stored(r) for r in sharing):
            return False
        return store.remove_model(run_dir)

    # --- reading them ---------------------------------------------------------------------------
    def stored_answers(self, runs: list[GridRun]) -> Iterator[tuple[str, str, Cached]]:
        """(model key, language, stored answers) for every language of ``runs`` with answers stored."""
        for run in runs:
            for lang in run.eval_languages:
                answers = self.answers_of(run, lang)
                if answers.exists():
                    yield run.model_key, lang, answers

    def run_answers(self, run: GridRun):
        """The stored answers of one run, with their scores, likelihoods and verdicts, as a table."""
        import pandas as pd

        from .judge import verdicts_of

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
            verdicts = verdicts_of(self.profile.eval.judge, self.root, run.model_key, lang, answers)
            if verdicts is not None and verdicts.exists():
                frame = frame.merge(pd.DataFrame(verdicts.read_rows())[["prompt_id", "judge", "judge_status"]],
                                    on="prompt_id", how="left")
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["gate"])


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
