"""The book's teaching pictures, computed from the real objects (tokenizer, model, data, artefacts).

Each chapter shows the mechanism it relies on, not a drawing of it: which tokens of a filled
prompt each method learns from (``token_training_frame``), what the tokenizer makes each language
cost (``tokens_per_character``), how many parameters LoRA and full tuning train in this very
model (``parameter_counts``), the learning-rate schedules the trainer really followed
(``learning_rate_frame``), and one prompt answered by every model (``side_by_side``). The
notebooks call these functions and stay thin; ``tests/test_teaching.py`` runs them on the tiny
model with the real tokenizer.

Also here: ``chapter_times`` (time to read and to re-execute a chapter, for its opener),
``table`` (a data frame shown without the index column), and ``variant`` (the experiment with a
few settings changed, which the exercise solutions use).
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path

import pandas as pd

from .book import chapter_path, recorded_run_time
from .config import with_overrides
from .data import EMBEDDED_TRAIN_LANGUAGES, Record, embedded_train
from .grid import Experiment
from .paths import PROJECT_ROOT
from .planning import plan_table
from .prompts import tokenize_example

# models, train, peft (torch) and the plotting libraries are imported by the pictures that use
# them.

#: Reading speed behind "time to read": words of prose a minute, plus time per figure or table.
WORDS_PER_MINUTE = 200
MINUTES_PER_OUTPUT = 0.5

METHOD_NAMES = {"lora": "LoRA", "full": "full tuning"}
LOSS_ON_WORDS = {"all": "prompt and response", "response": "response only"}


def _style():
    import seaborn as sns

    # The book's figure style (as in polyalpaca.findings): readable when scaled to a phone's width.
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=1.1)
    return sns


# --- tables --------------------------------------------------------------------------------

def table(frame: pd.DataFrame, precision: int = 2, index: bool = False, formats: dict | None = None):
    """A data frame for the page: without the index column (unless ``index``), numbers rounded,
    thousands separated, missing values as a dash; ``formats`` maps columns to format strings
    (``{"share": "{:.0%}"}``)."""
    styler = frame.style.format(precision=precision, thousands=",", na_rep="–")
    if formats:
        styler = styler.format(formats, na_rep="–")
    return styler if index else styler.hide(axis="index")


# --- chapter openers: time to read and to re-execute ----------------------------------------

def reading_minutes(chapter: str) -> int:
    """Minutes to read a chapter: its prose at ``WORDS_PER_MINUTE`` plus ``MINUTES_PER_OUTPUT`` for
    each code cell that shows something (figures, tables), counted from the chapter's source."""
    nb = json.loads(chapter_path(chapter).read_text(encoding="utf-8"))
    words = outputs = 0
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] == "markdown":
            words += len(source.split())
        elif "parameters" not in tags and "remove-cell" not in tags and "remove-output" not in tags:
            outputs += 1
    return max(1, math.ceil(words / WORDS_PER_MINUTE + outputs * MINUTES_PER_OUTPUT))


def chapter_times(chapter: str, exp, record: str | Path = "generated/timings.json") -> dict[str, str]:
    """Time to read and time to re-execute ``chapter`` (e.g. ``"03_training"``) under ``exp``'s
    profile, as prose for the chapter's opener.

    The execution time comes from the book's timing record (``recorded_run_time``;
    ``book/chapters/generated/timings.json``: chapters execute in ``book/chapters``, so the default
    relative path finds it). Without a record, the training and evaluation chapters give the
    prediction of ``polyalpaca plan`` (``planning.plan_table``) for profiles with measured rates.
    A book build replaces this text by the time it has just measured (``polyalpaca.book``), so a
    first build's pages show their own times too."""
    name = chapter_path(chapter).stem
    read = f"about {reading_minutes(name)} min"
    run = recorded_run_time(name, exp.profile.name, record)
    if run is not None:
        return {"read": read, "run": run}
    predicted = None
    if name in ("03_training", "04_evaluation") and exp.profile.tokens_per_second_estimate:
        totals = plan_table(exp)["totals"]
        predicted = totals.get("cpu_minutes" if name == "03_training" else "evaluation_minutes")
    if predicted is not None:
        run = f"about {max(predicted, 1):.0f} min from empty artefacts, as `polyalpaca plan` predicts (no build recorded here yet)"
    else:
        run = f"not recorded yet for the {exp.profile.name} profile (see the table on the front page after a build)"
    return {"read": read, "run": run}


# --- data: which tokens each method learns from ----------------------------------------------

def example_record(records: list[Record], with_input: bool = True) -> Record:
    """A short record to show tokenised: the shortest one with an input field (so every part of
    the template appears), or the shortest of all when ``with_input`` is false or none has one."""
    pool = [r for r in records if r.input.strip()] if with_input else []
    pool = pool or list(records)
    if not pool:
        raise ValueError("no records to choose an example from")
    return min(pool, key=lambda r: (len(r.instruction) + len(r.input) + len(r.output), r.id))


def trained_positions(labels: list[int]) -> list[bool]:
    """Whether each position's token is a training target. A causal LM predicts token i from the
    tokens before it, so the first token (``<bos>``) is never a target, and a label of -100
    (a masked prompt token) is not one either."""
    return [i > 0 and label != -100 for i, label in enumerate(labels)]


def token_training_frame(record: Record, tokenizer, template, methods: dict) -> pd.DataFrame:
    """One row per token of ``record`` filled into ``template`` and tokenised as training does
    (``polyalpaca.prompts.tokenize_example``): the token's text, whether it belongs to the prompt or
    the response, and one column per method (``methods``: name -> ``TrainConfig``) saying whether
    that method's loss is taken on it."""
    max_length = max(cfg.max_length for cfg in methods.values())
    parts = tokenize_example(record, tokenizer, template, max_length, "response")
    frame = pd.DataFrame({
        "position": range(len(parts["input_ids"])),
        "token_id": parts["input_ids"],
        "token": [_token_text(tokenizer, i) for i in parts["input_ids"]],
        "part": ["prompt" if label == -100 else "response" for label in parts["labels"]],
    })
    for name, cfg in methods.items():
        ex = tokenize_example(record, tokenizer, template, cfg.max_length, cfg.loss_on)
        mask = trained_positions(ex["labels"])
        frame[f"trained: {name}"] = mask + [False] * (len(frame) - len(mask))
    return frame


def _token_text(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    if "\ufffd" in text:  # a byte of a character split over several tokens
        text = tokenizer.convert_ids_to_tokens(token_id)
    return text


def token_training_summary(frame: pd.DataFrame, methods: dict) -> pd.DataFrame:
    """Per method: where its loss is taken, and how many of the example's tokens it learns from."""
    rows = []
    for name, cfg in methods.items():
        trained = frame[f"trained: {name}"]
        rows.append({"method": METHOD_NAMES.get(name, name), "loss on": LOSS_ON_WORDS.get(cfg.loss_on, cfg.loss_on),
                     "tokens": len(frame), "prompt tokens": int((frame["part"] == "prompt").sum()),
                     "tokens trained on": int(trained.sum()), "share trained": float(trained.mean())})
    return pd.DataFrame(rows)


_TRAINED = "background:#0072b2;color:#fff;border:1px solid #0072b2"
_MASKED = "background:#fff;color:#555;border:1px dashed #999"


def token_training_html(frame: pd.DataFrame, methods: dict) -> str:
    """The tokens of the example as coloured boxes, once per method: filled = the loss is taken on
    this token, dashed = masked. Spaces show as ·, line breaks as ↵."""
    def box(text: str, trained: bool) -> str:
        shown = html.escape(text.replace(" ", "\u00b7").replace("\n", "\u21b5"))
        style = (_TRAINED if trained else _MASKED) + ";display:inline-block;margin:1px;padding:0 3px;" \
            "border-radius:3px;font-family:monospace;font-size:0.85em;white-space:pre"
        return f'<span style="{style}">{shown}</span>' + ("<br>" if "\n" in text else "")

    blocks = []
    for name, cfg in methods.items():
        trained = frame[f"trained: {name}"]
        head = (f"<p style='margin:0.8em 0 0.2em'><b>{html.escape(METHOD_NAMES.get(name, name))}</b>: loss on "
                f"{html.escape(LOSS_ON_WORDS.get(cfg.loss_on, cfg.loss_on))}, "
                f"{int(trained.sum())} of {len(frame)} tokens trained on</p>")
        tokens = "".join(box(t, bool(k)) for t, k in zip(frame["token"], trained))
        blocks.append(head + f"<div style='line-height:1.9;max-width:100%'>{tokens}</div>")
    legend = (f"<p style='font-size:0.85em'><span style='{_TRAINED};padding:0 4px'>trained on</span> "
              f"<span style='{_MASKED};padding:0 4px'>masked (label -100)</span> "
              "&nbsp;· = space, ↵ = line break</p>")
    return "<div class='polyalpaca-tokens'>" + "".join(blocks) + legend + "</div>"


# --- data: what each language costs in tokens ----------------------------------------------

def tokens_per_character(tokenizer, languages: list[str] | None = None) -> pd.DataFrame:
    """Per language of the embedded training set: characters, tokens, tokens per character and
    tokens relative to English over the same records (the set is parallel, so the same content).

    Tokens per character compares badly across scripts (a Chinese character carries about a
    word); tokens relative to English on the same records is what a language costs in compute."""
    languages = languages or list(EMBEDDED_TRAIN_LANGUAGES)
    records = {lang: embedded_train(lang).items for lang in dict.fromkeys(["en", *languages])}
    common = set.intersection(*(set(r.id for r in recs) for recs in records.values()))
    totals = {}
    for lang, recs in records.items():
        texts = [t for r in recs if r.id in common for t in (r.instruction, r.input, r.output) if t]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        totals[lang] = (sum(len(t) for t in texts), sum(len(i) for i in ids))
    en_tokens = totals["en"][1]
    rows = [{"language": lang, "records": len(common), "characters": chars, "tokens": tokens,
             "tokens per character": tokens / chars, "tokens per record": tokens / len(common),
             "tokens relative to English": tokens / en_tokens}
            for lang, (chars, tokens) in totals.items() if lang in languages]
    return pd.DataFrame(rows)


def plot_tokens_per_language(frame: pd.DataFrame, highlight: list[str] | None = None):
    """Two panels: tokens per character, and tokens relative to English for the same records.
    Languages in ``highlight`` (the profile's training languages) are drawn in full colour."""
    import matplotlib.pyplot as plt

    _style()
    order = frame.sort_values("tokens relative to English")
    colours = ["#0072b2" if not highlight or lang in highlight else "#a6c8e0" for lang in order["language"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for ax, column, title in [(axes[0], "tokens per character", "Tokens per character"),
                              (axes[1], "tokens relative to English", "Tokens for the same records (English = 1)")]:
        ax.bar(order["language"], order[column], color=colours)
        ax.set(title=title, xlabel="language", ylabel=column)
        for x, y in enumerate(order[column]):
            ax.annotate(f"{y:.2f}", (x, y), ha="center", va="bottom", fontsize=8)
    axes[1].axhline(1.0, color="#555", lw=1, ls="--")
    if highlight:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color="#0072b2", label="trained on in this profile"),
                            Patch(color="#a6c8e0", label="other languages of the data set")],
                   loc="outside lower center", ncol=2, frameon=False, fontsize=9)
    return fig


# --- training: what each method trains ---------------------------------------------------

def parameter_counts(model_spec: str, profile) -> dict:
    """Trainable and total parameters of ``model_spec`` under each method of ``profile``, counted on
    the real model: full tuning trains every parameter; LoRA is the model wrapped by PEFT's
    ``get_peft_model`` with the profile's LoRA settings, exactly as training builds it
    (``polyalpaca.train.build_peft_config``). Also the shapes of one adapted projection."""
    from peft import get_peft_model

    from .models import load_model
    from .train import build_peft_config

    model = load_model(model_spec)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    rows = [{"method": "full tuning", "trainable": total, "total": total}]
    cfg = profile.lora
    targets = list(cfg.lora.target_modules)
    first = next(m for name, m in model.named_modules() if name.split(".")[-1] == targets[0] and hasattr(m, "weight"))
    d_out, d_in = first.weight.shape
    layers = sum(1 for name, _ in model.named_modules() if name.split(".")[-1] == targets[0])
    peft_model = get_peft_model(model, build_peft_config(cfg))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    rows.insert(0, {"method": "LoRA", "trainable": trainable, "total": sum(p.numel() for p in peft_model.parameters())})
    frame = pd.DataFrame(rows)
    frame["share trained"] = frame["trainable"] / frame["total"]
    del peft_model, model
    return {"table": frame, "embedding": embedding, "base_total": total, "module": targets[0],
            "targets": targets, "layers": layers, "d_in": int(d_in), "d_out": int(d_out),
            "r": cfg.lora.r, "alpha": cfg.lora.alpha}


def plot_lora_update(counts: dict):
    """The LoRA update of one projection, W + (alpha/r)·B·A, drawn to scale with this model's
    shapes (top), and the trainable and total parameters of each method (bottom, log scale)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    _style()
    d_in, d_out, r, alpha = counts["d_in"], counts["d_out"], counts["r"], counts["alpha"]
    fig, (ax, bars) = plt.subplots(2, 1, figsize=(8, 7), gridspec_kw={"height_ratios": [1.7, 1]},
                                   constrained_layout=True)
    scale = 1.0 / max(d_in, d_out)
    w, h = d_in * scale, d_out * scale
    thin = max(r * scale, 0.03)  # drawn at least this wide so that a small rank stays visible
    ax.add_patch(Rectangle((0, 0), w, h, color="#bbbbbb"))
    ax.text(w / 2, h / 2, f"W\n{d_out:,} × {d_in:,}\nfrozen", ha="center", va="center", fontsize=12)
    ax.text(w + 0.06, h / 2, f"+  {alpha}/{r}  ·", ha="left", va="center", fontsize=14)
    bx = w + 0.45
    ax.add_patch(Rectangle((bx, 0), thin, h, color="#0072b2"))
    ax.text(bx + thin / 2, -0.03, f"B\n{d_out:,} × {r}", ha="center", va="top", fontsize=11, color="#0072b2")
    ax0 = bx + thin + 0.04
    ax.add_patch(Rectangle((ax0, h - thin), w, thin, color="#e69f00"))
    ax.text(ax0 + w / 2, h - thin - 0.03, f"A\n{r} × {d_in:,}", ha="center", va="top", fontsize=11,
            color="#b07800")
    ax.set(xlim=(-0.02, ax0 + w + 0.02), ylim=(-0.2, h + 0.03), aspect="equal")
    ax.set_title(f"One {counts['module']} projection, to scale: the update is (alpha/r)·B·A", fontsize=12)
    ax.axis("off")
    t = counts["table"]
    y = list(range(len(t)))
    bars.barh(y, t["total"], height=0.55, color="#dddddd", label="all parameters")
    bars.barh(y, t["trainable"], height=0.55, color="#0072b2", label="trained")
    bars.set_xscale("log")
    bars.set_xlim(max(1, t["trainable"].min() / 5), t["total"].max() * 60)
    bars.set_yticks(y, t["method"])
    bars.invert_yaxis()
    for i, row in t.iterrows():
        bars.text(row["trainable"] * 1.15, i, f"{row['trainable']:,} ({row['share trained']:.2%})", va="center",
                  fontsize=10)
    bars.set(xlabel="parameters (log scale)", title="Parameters trained per method")
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=9, frameon=False)
    return fig


def method_settings_table(profile, methods: list[str] | None = None) -> pd.DataFrame:
    """The training settings of each method, one row per setting, with the LoRA settings flattened
    and shown only where they apply (a rank means nothing for full tuning)."""
    methods = methods or ["lora", "full"]
    rows: dict[str, dict[str, object]] = {}
    for method in methods:
        cfg = dataclasses.asdict(profile.train_config(method))
        lora = cfg.pop("lora")
        cfg.pop("method")
        if method == "lora":
            cfg.update({f"lora.{k}": v for k, v in lora.items()})
        for key, value in cfg.items():
            rows.setdefault(key, {})[METHOD_NAMES.get(method, method)] = value
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("setting").reset_index()
    return frame.fillna("–").astype(str)


def learning_rate_table(profile, counts: dict | None = None) -> pd.DataFrame:
    """Each method's learning rate and schedule, with its trainable parameters when known."""
    rows = []
    for method in ("lora", "full"):
        cfg = profile.train_config(method)
        warm = (f"{cfg.warmup_ratio:.0%} of the steps" if cfg.warmup_ratio > 0
                else f"{cfg.warmup_steps} steps" if cfg.warmup_steps else "none")
        row = {"method": METHOD_NAMES[method], "learning rate": f"{cfg.learning_rate:g}", "schedule": cfg.scheduler,
               "warm-up": warm, "epochs": f"{cfg.epochs:g}"}
        if counts:
            t = counts["table"].set_index("method")["trainable"]
            row["trainable parameters"] = f"{int(t[METHOD_NAMES[method]]):,}"
        rows.append(row)
    return pd.DataFrame(rows)


def learning_rate_check(profile: str) -> tuple[pd.DataFrame, dict] | None:
    """The stored learning-rate check of ``profile`` (``benchmarks/lr_check.py``): one grid run
    trained at a few learning rates per method, with its validation losses and score gains; None
    when the check was not run for this profile."""
    path = PROJECT_ROOT / "benchmarks" / "results" / f"lr_check_{profile}.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return pd.DataFrame(record.pop("rows")), record


def learning_rate_frame(exp) -> pd.DataFrame:
    """The learning rate at every logged step of every trained model, as the trainer recorded it
    (a model shared by two runs, like English-only and monolingual-en, once)."""
    rows, seen = [], set()
    for run in exp.runs(include_base=False):
        result = exp.train_result(run)
        if result is None or run.model_key in seen:
            continue
        seen.add(run.model_key)
        history = [h for h in result["log_history"] if "learning_rate" in h]
        last = max((h["step"] for h in history), default=1)
        rows += [{"run": run.name, "method": METHOD_NAMES.get(run.method, run.method), "step": h["step"],
                  "progress": h["step"] / last, "learning rate": h["learning_rate"]} for h in history]
    return pd.DataFrame(rows)


def plot_learning_rates(frame: pd.DataFrame):
    """The schedules the trainer followed, one panel per method (their rates differ by an order of
    magnitude in the paper's setting), over the fraction of training done, on linear axes: a rate
    of 0, where a linear decay ends, is drawn like every other point. Method colours as in every
    figure of the book (``findings.method_colours``)."""
    import matplotlib.pyplot as plt

    from .findings import METHOD_ORDER, method_colours

    _style()
    names = {v: k for k, v in METHOD_NAMES.items()}
    methods = sorted(set(frame["method"]), key=lambda m: METHOD_ORDER.index(names.get(m, m))
                     if names.get(m, m) in METHOD_ORDER else len(METHOD_ORDER))
    colours = method_colours([names.get(m, m) for m in methods if names.get(m, m) in METHOD_ORDER])
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.2), squeeze=False,
                             constrained_layout=True)
    for ax, method in zip(axes[0], methods):
        colour = colours.get(names.get(method, method), "black")
        for _, run in frame[frame["method"] == method].groupby("run"):
            ax.plot(run["progress"], run["learning rate"], marker="o", markersize=3, color=colour, alpha=0.7)
        ax.set_ylim(bottom=0)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.set(xlabel="fraction of the run's steps", ylabel="learning rate" if ax is axes[0][0] else "",
               title=method)
    fig.suptitle("Learning rate per logged step, as the trainer recorded it")
    return fig


# --- training: one prompt, every model -------------------------------------------------------

def side_by_side(answers: pd.DataFrame, lang: str | None = None, prompt_id: str | None = None,
                 width: int = 160, languages: list[str] | None = None) -> pd.DataFrame | None:
    """One prompt answered by the base model and by every tuned model, from the stored answers
    (``Experiment.answers_frame``); None when no answers are stored yet. By default the first
    prompt of the first non-English language, in the order of ``languages`` (the profile's test
    languages), that the most models answered."""
    if answers is None or answers.empty:
        return None
    if "seed" in answers:  # one training seed: the first (the base model has none)
        first = answers["seed"].dropna().min()
        answers = answers[answers["seed"].isna() | (answers["seed"] == first)]
    if lang is None:
        counts = answers.groupby("lang")["run"].nunique()
        order = [l for l in (languages or []) if l in counts.index] + sorted(set(counts.index) - set(languages or []))
        full = [l for l in order if counts[l] == counts.max()]
        lang = next((l for l in full if l != "en"), full[0])
    sub = answers[answers["lang"] == lang]
    prompt_id = prompt_id or sorted(sub["prompt_id"])[0]
    sub = sub[sub["prompt_id"] == prompt_id]
    order = {"base": 0, "lora": 1, "full": 2}
    sub = sub.assign(_o=sub["method"].map(order)).sort_values(["_o", "recipe", "name"])

    def cut(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= width else text[:width - 1] + "…"

    out = pd.DataFrame({"model": [("base model" if m == "base" else f"{METHOD_NAMES.get(m, m)} · {n}")
                                  for m, n in zip(sub["method"], sub["name"])],
                        "answer": sub["response"].map(cut),
                        "language gate": sub["gate_reason"]})
    out.attrs.update(lang=lang, prompt_id=prompt_id, prompt=str(sub["prompt"].iloc[0]) if len(sub) else "")
    return out.reset_index(drop=True)


# --- exercises ---------------------------------------------------------------------------

def variant(exp, overrides: dict, artefacts_dir: str | Path | None = None):
    """The experiment ``exp`` with a few settings changed, writing to the same artefacts folder by
    default: every stored result is keyed by what shaped it, so runs the change does not touch are
    reused and changed ones are stored next to the originals, never over them."""
    return Experiment(with_overrides(exp.profile, overrides), artefacts_dir or exp.root)
