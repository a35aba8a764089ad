"""The chapters' reports: what each cell of the data, translation, training and evaluation
chapters shows, computed here so that a cell calls the package once and shows the result.

A chapter makes its report from the ``grid.Experiment`` of its setup cell (``DataChapter(exp)``,
...); each method of the report is one cell and returns a ``Section``: the values it glues for
the chapter's prose (``{glue:text}`name```) and what it shows, in order (tables, HTML, lines of
text). Figures are drawn while a section is made and appear below the cell, as any figure a cell
draws. ``Section.show()`` glues and shows it::

    data = reports.DataChapter(exp)
    data.tokens().show()

What several cells read (a tokenizer, the data statistics, the study, the answers) is computed
once per report.
"""
from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd
from IPython.display import HTML, display

from . import chapter, planning, teaching
from . import findings as F
from .data import LANGUAGES
from .evaluate import worked_scores
from .grid import Experiment
from .models import load_tokenizer
from .translate import translation_table


# --- what a cell shows ----------------------------------------------------------------------------

@dataclass
class Table:
    """A table as ``chapter.show`` displays it (a caption above it, or collapsed under it)."""

    frame: pd.DataFrame
    caption: str = ""
    collapsed: bool = False
    precision: int = 3
    formats: dict | None = None

    def show(self) -> None:
        chapter.show(self.frame, self.caption, self.collapsed, self.precision, self.formats)


@dataclass
class StyledTable:
    """A table as ``teaching.table`` styles it, shown as a cell's last value shows it."""

    frame: pd.DataFrame
    precision: int = 2
    formats: dict | None = None

    def show(self) -> None:
        display(teaching.table(self.frame, precision=self.precision, formats=self.formats))


@dataclass
class Html:
    """A piece of HTML (a sentence with markup, a token picture)."""

    text: str

    def show(self) -> None:
        display(HTML(self.text))


@dataclass
class Text:
    """Lines printed below the cell, wrapped to the page (``chapter.say``) unless ``wrap`` is off."""

    text: str
    wrap: bool = True

    def show(self) -> None:
        if self.wrap:
            chapter.say(self.text)
        else:
            print(self.text)


Shown = Table | StyledTable | Html | Text


@dataclass
class Section:
    """What one chapter cell gives its page: ``glue`` values for the prose and what it shows."""

    glue: dict[str, Any] = field(default_factory=dict)
    shown: list[Shown] = field(default_factory=list)

    def show(self) -> None:
        """Glue every value, then show every item in order."""
        for name, value in self.glue.items():
            chapter.glue(name, value)
        for item in self.shown:
            item.show()


def opener(name: str, exp: Experiment, **glue: Any) -> Section:
    """A chapter's first section: its time to read and to re-execute (``teaching.chapter_times``)
    and the chapter's own opening values."""
    times = teaching.chapter_times(name, exp)
    return Section({"time_read": times["read"], "time_run": times["run"], **glue})


# --- 01 data ----------------------------------------------------------------------------------------

class DataChapter:
    """The data chapter: records, one example as the model sees it, token costs, the recipes."""

    def __init__(self, exp: Experiment):
        self.exp = exp
        self.methods = {"lora": exp.profile.lora, "full": exp.profile.full}

    @cached_property
    def first_language(self) -> str:
        return self.exp.profile.data.train_languages[0]

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.exp.profile.grid.models[0])

    @cached_property
    def stats(self) -> dict:
        return planning.data_stats(self.exp)

    def opener(self) -> Section:
        p = self.exp.profile
        section = opener("01_data", self.exp)
        section.shown.append(Html(f"<p>Profile <code>{p.name}</code>: <em>{html.escape(p.description)}</em></p>"))
        return section

    def records(self) -> Section:
        """One id's record in every training language."""
        split = self.exp.split()
        first_id = split.train[self.first_language][0].id
        example = pd.DataFrame([{"language": lang, "instruction": r.instruction, "input": r.input, "output": r.output[:120]}
                                for lang, recs in split.train.items() for r in recs if r.id == first_id])
        return Section(shown=[StyledTable(example)])

    def tokens(self) -> Section:
        """One record as training tokens: which tokens each method trains on."""
        record = teaching.example_record(self.exp.split().train[self.first_language])
        tokens = teaching.token_training_frame(record, self.tokenizer, self.exp.template, self.methods)
        summary = teaching.token_training_summary(tokens, self.methods)
        counts = summary.set_index("method")["tokens trained on"]
        return Section({"example_lang": LANGUAGES.get(self.first_language, self.first_language),
                        "example_tokens": len(tokens), "lora_trained": int(counts["LoRA"]),
                        "full_trained": int(counts["full tuning"]), "prompt_tokens": int(summary["prompt tokens"].iloc[0])},
                       [Html(teaching.token_training_html(tokens, self.methods)),
                        StyledTable(summary, formats={"share trained": "{:.0%}"})])

    def token_costs(self) -> Section:
        """Tokens per character and per English token, per language (a figure)."""
        costs = teaching.tokens_per_character(self.tokenizer)
        relative = costs.set_index("language")["tokens relative to English"].drop("en")
        teaching.plot_tokens_per_language(costs, self.exp.profile.data.train_languages)
        return Section({"costliest": f"{LANGUAGES[relative.idxmax()]} ({relative.max():.2f} times English)",
                        "cheapest": f"{LANGUAGES[relative.idxmin()]} ({relative.min():.2f} times)"})

    def languages(self) -> Section:
        """Records and tokens per training language."""
        per_lang = planning.language_table(self.stats).rename_axis("language").reset_index()
        glue = {"n_train_langs": len(per_lang), "n_val_ids": self.stats["validation_ids"]}
        per_lang = per_lang.rename(columns={"train": "train records", "validation": "validation records",
                                            "tokens_total": "tokens", "tokens_mean": "mean tokens",
                                            "tokens_max": "max tokens"})
        return Section(glue, [StyledTable(per_lang.drop(columns=["tokens_median"]), precision=1)])

    def recipes(self) -> Section:
        """The recipes: runs, examples, tokens and budget units per epoch."""
        recipes = planning.recipe_table(self.exp, self.stats)
        glue = {"multi_units": f"{recipes['budget_units'].get('multilingual', 0.0):g}"}
        recipes = recipes.rename_axis("recipe").reset_index().rename(columns={"budget_units": "budget units"})
        return Section(glue, [StyledTable(recipes, formats={"budget units": "{:g}"})])

    def training_sets(self) -> Section:
        """The grid's training sets with the examples each takes from every language."""
        langs = self.exp.profile.data.train_languages
        counts = planning.run_counts_table(self.exp).reset_index()
        counts = counts[["run", *langs, "validation", "units"]].astype({lang: int for lang in langs})
        return Section(shown=[StyledTable(counts.rename(columns={"units": "budget units"}),
                                          formats={"budget units": "{:g}"})])


# --- 02 translation ---------------------------------------------------------------------------------

class TranslationChapter:
    """The translation chapter: the settings, the study, chrF per language, the translations."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    @cached_property
    def study(self) -> dict:
        return self.exp.translation_study()

    @cached_property
    def rows(self) -> pd.DataFrame:
        return pd.DataFrame(self.study["rows"])

    def opener(self) -> Section:
        settings = self.exp.profile.translation
        section = opener("02_translation", self.exp, translator=f"{settings.model}, {settings.backend} backend")
        section.shown.append(Table(pd.DataFrame({"setting": k, "value": str(v)}
                                                for k, v in dataclasses.asdict(settings).items())))
        return section

    def translate(self) -> Section:
        """Translate the sample (stored, and reused with the same settings, records and prompt)."""
        return Section(shown=[Text(f"{len(self.rows)} fields translated; "
                                   f"rejected replies: {int(self.rows['failed'].sum())}")])

    def results(self) -> Section:
        """chrF per language, of the accepted translations and of everything written."""
        summary = translation_table(self.study)
        means = summary.mean(numeric_only=True)
        accepted = means["chrF (accepted)"]
        by_lang = summary["chrF (all output)"].dropna().sort_values()
        glue = {"translated_share": round(float(summary["records translated"].sum() / max(summary["records"].sum(), 1)), 2),
                "mean_chrf": "n/a (none accepted)" if pd.isna(accepted) else round(float(accepted), 1),
                "raw_chrf": round(float(means["chrF (all output)"]), 1),
                "copy_chrf": round(float(means["chrF of the English source (floor)"]), 1),
                "worst_lang": f"{by_lang.index[0]} ({by_lang.iloc[0]:.1f})" if len(by_lang) else "n/a",
                "best_lang": f"{by_lang.index[-1]} ({by_lang.iloc[-1]:.1f})" if len(by_lang) else "n/a"}
        shown: list[Shown] = [Text(str(self.study["ledger"]), wrap=False)] if self.study["ledger"] else []
        return Section(glue, shown + [Table(summary.rename_axis("language").reset_index(), precision=1)])

    def side_by_side(self) -> Section:
        """Source, reference and the model's translation (or its rejected reply)."""
        rows = self.rows
        shown = rows.assign(output=rows["translation"].fillna("REJECTED: " + rows["reply"].fillna("")))
        shown = shown[["lang", "field", "source", "reference", "output"]].rename(columns={"lang": "language"})
        return Section(shown=[Table(shown.head(18))])


# --- 03 training ------------------------------------------------------------------------------------

class TrainingChapter:
    """The training chapter: the methods' settings and sizes, learning rates, the trained runs."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    @cached_property
    def counts(self) -> dict:
        return teaching.parameter_counts(self.exp.profile.grid.models[0], self.exp.profile)

    def opener(self) -> Section:
        methods = self.exp.profile.grid.methods
        return opener("03_training", self.exp,
                      grid_methods=" and ".join(teaching.METHOD_NAMES.get(m, m) for m in methods)
                      + (" only" if len(methods) == 1 else ""))

    def method_settings(self) -> Section:
        return Section(shown=[Table(self.exp.method_settings().rename_axis("setting").reset_index(),
                                    caption="every training setting", collapsed=True)])

    def parameters(self) -> Section:
        """What each method trains (a figure of the LoRA update)."""
        counts = self.counts
        t = counts["table"].set_index("method")
        teaching.plot_lora_update(counts)
        return Section({"lora_trainable": f"{int(t.loc['LoRA', 'trainable']):,}",
                        "lora_share": f"{t.loc['LoRA', 'share trained']:.2%}",
                        "full_trainable": f"{int(t.loc['full tuning', 'trainable']):,}",
                        "embedding_share": f"{counts['embedding'] / counts['base_total']:.0%}",
                        "lora_targets": ", ".join(counts["targets"]), "n_layers": counts["layers"],
                        "lora_scale": f"{counts['alpha']}/{counts['r']} = {counts['alpha'] / counts['r']:g}"})

    def learning_rates(self) -> Section:
        p = self.exp.profile
        ratio = p.lora.learning_rate / p.full.learning_rate
        return Section({"lr_lora": f"{p.lora.learning_rate:g}", "lr_full": f"{p.full.learning_rate:g}",
                        "lr_ratio": f"{ratio:g}",
                        "lr_compare": "the same rate" if ratio == 1 else
                        f"{ratio:g} times {'smaller' if ratio > 1 else 'larger'}"},
                       [Table(teaching.learning_rate_table(p, self.counts))])

    def learning_rate_check(self) -> Section:
        """The stored check of the learning rates on the real model (``benchmarks/lr_check.py``)."""
        name = self.exp.profile.name
        check = teaching.learning_rate_check(name)
        if check is None:
            return Section(shown=[Text(f"No learning-rate check is stored for the {name} profile: "
                                       f"python benchmarks/lr_check.py --profile {name} runs one.", wrap=False)])
        frame, record = check
        return Section(shown=[Table(frame, caption=f"{record['run']}, seed {record['seed']}, {record['minutes']} "
                                                   f"minutes (git {record['git'][:8]})")])

    def runs(self) -> Section:
        """Every trained run: size, budget, steps, time, validation loss before and after."""
        table = F.runs_frame(self.exp)
        unique = table.drop_duplicates("trained model")  # English-only is the English monolingual model
        steps = unique["steps"].dropna().astype(int)
        glue = {"n_runs": len(table), "n_models": len(unique),
                "train_minutes": round(float(unique["seconds"].sum()) / 60, 1),
                "steps_range": "no recorded steps" if steps.empty else f"{steps.min()} optimizer steps"
                if steps.min() == steps.max() else f"{steps.min()} to {steps.max()} optimizer steps"}
        shown = table[["run", "method", "seed", "examples", "budget units", "tokens", "steps", "seconds",
                       "validation loss before", "best validation loss"]].astype({"budget units": float, "seconds": float})
        formats = {"budget units": "{:g}", "seconds": "{:.0f}", "validation loss before": "{:.3f}",
                   "best validation loss": "{:.3f}"}
        items: list[Shown] = [StyledTable(shown[shown["seed"] == shown["seed"].min()].drop(columns=["seed"]),
                                          formats=formats)]
        if shown["seed"].nunique() > 1:
            items.append(Table(shown, caption=f"every seed ({shown['seed'].nunique()} seeds, {len(shown)} runs)",
                               collapsed=True, precision=2, formats=formats))
        return Section(glue, items)

    def losses(self) -> Section:
        """The losses as training went, per run (a figure)."""
        F.plot_losses(F.loss_history_frame(self.exp))
        return Section()

    def learning_rate_schedules(self) -> Section:
        """The learning rate of each method over its steps (a figure)."""
        teaching.plot_learning_rates(teaching.learning_rate_frame(self.exp))
        return Section()


# --- 04 evaluation ----------------------------------------------------------------------------------

UNITS = {"NLL/byte": "NLL per byte of the reference (nats per UTF-8 byte, lower is better)",
         "log-odds": "language log-odds (nats, higher is better)", "gate": "share passing the language gate"}


class EvaluationChapter:
    """The evaluation chapter: answers and scores, the scores' behaviour, the language checks."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    @cached_property
    def answers(self) -> pd.DataFrame:
        """Every stored answer with its scores (``Experiment.answers_frame``), read once."""
        return self.exp.answers_frame()

    @cached_property
    def summary(self) -> pd.DataFrame:
        return F.summary_table(self.answers)

    def opener(self) -> Section:
        d = self.exp.decoding(self.exp.profile.grid.methods[0])
        return opener("04_evaluation", self.exp, decoding=(
            ("greedy decoding" if d.num_beams == 1 else f"beam search with {d.num_beams} beams")
            + f", at most {d.max_new_tokens} new tokens, no_repeat_ngram_size {d.no_repeat_ngram_size}"
            + (f", repetition penalty {d.repetition_penalty:g}" if d.repetition_penalty != 1 else "")))

    def evaluate(self) -> Section:
        """Answer and score the test prompts of every trained run (stored results are reused)."""
        self.exp.evaluate_all()
        return Section({"n_answers": len(self.answers), "n_models_evaluated": int(self.answers["run"].nunique()),
                        "n_skipped": sum(self.exp.skipped.values())},
                       [Table(self.exp.decoding_settings().rename_axis("setting").reset_index(),
                              caption="decoding settings per model kind")])

    def worked_scores(self) -> Section:
        """Each offline score on a few made-up answers to one prompt."""
        lang = next((l for l in self.exp.profile.data.test_languages if l != "en"), "en")
        example = pd.DataFrame(worked_scores(self.exp.test_prompts(lang)[0], self.exp.english_references()[0]))
        return Section({"shuffled_chrf": float(example.loc[1, "chrF"]), "short_chrf": float(example.loc[0, "chrF"])},
                       [Table(example.drop(columns=["text"]))])

    def judge(self) -> Section:
        """The LLM judge's verdicts, when one is configured (``Experiment.judge_all``)."""
        return Section(shown=[Text(self.exp.judge_all()["message"])])

    def results(self) -> Section:
        """The main score per method, recipe and test language."""
        answers, table = self.answers, self.summary
        main = [c for c in ["NLL/byte", "log-odds", "gate"] if c in table]
        verifiable = answers.dropna(subset=["correct"]).groupby("lang", sort=False)["prompt_id"].nunique()
        pivot = table.pivot_table(index=["method", "recipe"], columns="lang", values=main[0], sort=False)
        return Section({"base_gate": round(float(answers[answers.recipe == "base"]["gate"].mean()), 2)
                        if (answers.recipe == "base").any() else "n/a",
                        "tuned_gate": round(float(answers[answers.recipe != "base"]["gate"].mean()), 2),
                        "n_verifiable": ", ".join(f"{lang} {n}" for lang, n in verifiable.items()) or "no",
                        "accuracy_step": f"{1 / verifiable.max():.2f}" if len(verifiable) else "n/a"},
                       [Table(pivot.round(3).reset_index(),
                              caption=f"{UNITS[main[0]]}: rows method and recipe, columns test language")])

    def every_score(self) -> Section:
        return Section(shown=[Table(self.summary.round(3), caption="every score per method, recipe and language",
                                    collapsed=True)])

    def language_confusion(self) -> Section:
        """Which language each recipe answers in (a figure)."""
        F.plot_language_confusion(self.answers)
        return Section()

    def detector_agreement(self) -> Section:
        agreement = F.detector_agreement(self.answers)
        return Section({"min_detector_agreement": round(float(agreement["agreement"].min()), 2)},
                       [Table(agreement.round(3))])

    def gate_changes(self) -> Section:
        """What deciding among the study's languages changes in the gate's outcomes."""
        changes = F.gate_language_changes(self.answers, self.exp.gate_candidates(), self.exp.profile.eval.langid_seed)
        return Section({"gate_outcomes_changed": int(changes["outcomes changed"].sum()) if len(changes) else 0},
                       [Table(changes, caption="wrong-language answers with langdetect's 55 languages and with the "
                                               "study's languages")])

    def one_prompt(self) -> Section:
        """One prompt answered by the untuned model and every tuned model."""
        side = teaching.side_by_side(self.answers, languages=self.exp.profile.data.test_languages)
        if side is None:
            return Section(shown=[Html("<p><em>No answers were generated in this build.</em></p>")])
        return Section(shown=[Html(f"<p><b>Prompt</b> ({side.attrs['lang']}, {side.attrs['prompt_id']}): "
                                   f"{html.escape(side.attrs['prompt'])}</p>"), Table(side)])

    def first_answers(self) -> Section:
        """The first prompt of each language answered by every recipe (first seed), collapsed."""
        answers = self.answers
        first = answers.groupby("lang")["prompt_id"].transform("min") == answers["prompt_id"]
        one_seed = answers["seed"].isna() | (answers["seed"] == self.exp.profile.grid.seeds[0])
        columns = ["lang", "method", "recipe", "response", "gate_reason"]
        return Section(shown=[Table(answers[first & one_seed][columns].sort_values(["lang", "method", "recipe"]),
                                    caption="answers side by side", collapsed=True)])
