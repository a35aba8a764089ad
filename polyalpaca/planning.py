"""What a profile will cost before anything runs: data statistics, the grid, compute estimates
and the disk its models need (``disk_estimate``, with the free space of the artefacts folder's
disk: ``polyalpaca check`` prints it, the book warns before its first chapter when it is short)."""
from __future__ import annotations

import dataclasses
import re
import shutil
import statistics
import time
from functools import lru_cache
from pathlib import Path

from . import design
from .config import Profile
from .design import model_short_name
from .grid import Experiment
from .prompts import tokenize_example

# models, likelihood (torch, transformers) and pandas are imported where a count or table needs
# them: `polyalpaca check` and the offline plan run without them.


def _token_lengths(exp: Experiment, model: str, records, memo: dict | None = None) -> list[int]:
    """Tokens of each record as trained (prompt + response). ``memo`` keeps the counts across
    calls: the grid trains the same records under several methods, recipes and seeds."""
    tok = _tokenizer(model)
    cfg = exp.profile.lora
    memo = {} if memo is None else memo
    out = []
    for r in records:
        k = (model, r.lang, r.id, r.instruction, r.input, r.output)
        if k not in memo:
            memo[k] = len(tokenize_example(r, tok, exp.template, cfg.max_length, "all")["input_ids"])
        out.append(memo[k])
    return out


@lru_cache(maxsize=4)
def _tokenizer(model: str):
    from .models import load_tokenizer

    return load_tokenizer(model)


def token_length_frame(exp: Experiment):
    """One row per training record: language and token count (prompt + response)."""
    import pandas as pd

    model = exp.profile.grid.models[0]
    return pd.DataFrame([{"lang": lang, "tokens": n} for lang, recs in exp.split().train.items()
                         for n in _token_lengths(exp, model, recs)])


def language_table(stats: dict):
    import pandas as pd

    return pd.DataFrame.from_dict(stats["languages"], orient="index")


def recipe_table(exp: Experiment, stats: dict):
    """Each recipe's runs, examples, tokens and budget units (per epoch), with its languages."""
    import pandas as pd

    table = pd.DataFrame.from_dict(stats["recipes"], orient="index")
    languages: dict[str, dict[str, None]] = {}
    for ts in exp.training_sets():
        languages.setdefault(ts.recipe, {}).update(dict.fromkeys(ts.languages))
    text = {recipe: ", ".join(langs) for recipe, langs in languages.items()}
    text["monolingual"] = "one of: " + ", ".join(exp.profile.data.train_languages)
    table["languages per run"] = [text[r] for r in table.index]
    return table


def run_counts_table(exp: Experiment):
    """Per training set: examples per language, validation size and budget units."""
    import pandas as pd

    rows = [{"run": ts.name, **ts.counts(), "validation": len(ts.validation), "units": ts.budget_units}
            for ts in exp.training_sets()]
    return pd.DataFrame(rows).set_index("run").fillna(0).astype({"validation": int})


def data_stats(exp: Experiment) -> dict:
    """Per-language counts and token statistics under the first model's tokenizer, and each
    recipe's budget in examples and tokens (per epoch)."""
    model = exp.profile.grid.models[0]
    split = exp.split()
    langs = {}
    tokens_by_lang = {}
    for lang, records in split.train.items():
        lengths = _token_lengths(exp, model, records)
        tokens_by_lang[lang] = dict(zip(((r.lang, r.id) for r in records), lengths))
        langs[lang] = {
            "train": len(records), "validation": len(split.validation[lang]),
            "tokens_total": sum(lengths), "tokens_mean": round(statistics.mean(lengths), 1) if lengths else 0,
            "tokens_median": statistics.median(lengths) if lengths else 0, "tokens_max": max(lengths, default=0),
        }
    recipes = {}
    for ts in exp.training_sets():
        entry = recipes.setdefault(ts.recipe, {"runs": 0, "examples": 0, "tokens": 0, "budget_units": 0.0})
        entry["runs"] += 1
        entry["examples"] += len(ts.train)
        entry["tokens"] += sum(tokens_by_lang[r.lang][(r.lang, r.id)] for r in ts.train)
        entry["budget_units"] += ts.budget_units
    tests = {lang: len(exp.test_prompts(lang)) for lang in exp.profile.data.test_languages}
    return {"profile": exp.profile.name, "tokenizer": model, "languages": langs, "recipes": recipes,
            "test_prompts": tests, "validation_ids": len(split.validation_ids)}


def format_stats(stats: dict) -> str:
    lines = [f"profile {stats['profile']}, tokens under {stats['tokenizer']}", "",
             f"{'lang':<6}{'train':>7}{'val':>6}{'tokens':>10}{'mean':>8}{'median':>8}{'max':>6}"]
    for lang, s in stats["languages"].items():
        lines.append(f"{lang:<6}{s['train']:>7}{s['validation']:>6}{s['tokens_total']:>10}{s['tokens_mean']:>8}"
                     f"{s['tokens_median']:>8}{s['tokens_max']:>6}")
    lines += ["", f"{'recipe':<14}{'runs':>5}{'examples':>10}{'tokens':>10}{'units C':>9}   (per epoch)"]
    for name, r in stats["recipes"].items():
        lines.append(f"{name:<14}{r['runs']:>5}{r['examples']:>10}{r['tokens']:>10}{r['budget_units']:>9.0f}")
    lines += ["", "test prompts: " + ", ".join(f"{k} {v}" for k, v in stats["test_prompts"].items())]
    return "\n".join(lines)


def _cells(exp: Experiment, readable: bool):
    """(cell, examples, tokens per epoch, trained model's identity) per run of the grid
    (``design.cells``). Readable data: the real training sets and run keys. Otherwise (the Hub is
    unreachable) the cells sized by the profile's estimates and identified by the recipes' rules."""
    p = exp.profile
    cells = design.cells(p, include_base=False)
    if readable:
        memo: dict = {}
        for cell, run in zip(cells, exp.runs(include_base=False), strict=True):
            yield (cell, run.train_examples, sum(_token_lengths(exp, run.model, run.training_set.train, memo)),
                   run.model_key)
        return
    per_lang = p.grid.records_per_language_estimate - p.data.validation_size
    for cell in cells:
        examples = round(cell.sets_of_one_language * per_lang)
        yield cell, examples, examples * p.grid.tokens_per_example_estimate, cell.model_id


def evaluation_estimate(exp: Experiment, readable: bool) -> dict:
    """Seconds to evaluate every model of the grid once: loading, answering (prompts x new
    tokens) and scoring the references' likelihood, at the profile's measured rates."""
    p, e = exp.profile, exp.profile.estimate
    if not (e.generation_tokens_per_second and readable):
        return {}
    per_model: dict[str, set] = {}  # languages scored per model
    answered: dict[str, set] = {}  # languages answered per model (eval.english_answers)
    for run in exp.runs():
        per_model.setdefault(run.model_key, set()).update(run.eval_languages)
        answered.setdefault(run.model_key, set()).update(l for l in run.eval_languages if exp.generates(run, l))
    prompts = {lang: len(exp.test_prompts(lang)) for lang in p.data.test_languages}
    lik_seconds = {}
    if p.eval.likelihood and e.likelihood_tokens_per_second and e.likelihood_scored_tokens_per_second:
        from .likelihood import likelihood_work

        tok = _tokenizer(p.grid.models[0])
        for lang in p.data.test_languages:
            work = likelihood_work(tok, exp.template, [(q, r) for _, q, r in exp.likelihood_pairs(lang)],
                                   p.eval.likelihood_max_tokens)
            lik_seconds[lang] = (work.model_tokens / e.likelihood_tokens_per_second
                                 + work.scored_tokens / e.likelihood_scored_tokens_per_second)
    seconds = {"load": 0.0, "generation": 0.0, "likelihood": 0.0}
    for model_key, langs in per_model.items():
        seconds["load"] += e.model_load_s
        new_tokens = sum(prompts[l] for l in answered[model_key]) * p.eval.decoding.max_new_tokens
        seconds["generation"] += new_tokens / e.generation_tokens_per_second
        seconds["likelihood"] += sum(lik_seconds.get(l, 0.0) for l in langs)
    return {"models": len(per_model), **{k: round(v) for k, v in seconds.items()}}


def machine_speed(seconds: float = 3.0) -> float:
    """GFLOP/s of fp32 matrix products shaped like this project's CPU work (a slice of a 270M
    model's 262k-way output layer applied to a batch of hidden states), measured for about
    ``seconds``. Shared machines drift by tens of percent from hour to hour; the ratio of this
    to ``estimate.reference_gflops`` says how much slower or faster the machine is than when the
    profile's rates were measured."""
    import torch

    hidden, weight = torch.randn(256, 640), torch.randn(640, 16384)
    torch.mm(hidden, weight)  # warm-up
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        tick = time.perf_counter()
        torch.mm(hidden, weight)
        times.append(time.perf_counter() - tick)
    # The median product: a busy neighbour's burst moves it less than it moves the mean.
    return 2 * 256 * 640 * 16384 / statistics.median(times) / 1e9


def at_speed(profile, gflops: float):
    """``profile`` with its [estimate] rates scaled to a machine measured at ``gflops`` now
    (``machine_speed``): rates times now/then, fixed seconds and minutes divided by it."""
    e = profile.estimate
    if not (gflops and e.reference_gflops):
        return profile
    f = gflops / e.reference_gflops
    estimate = dataclasses.replace(
        e, run_overhead_s=e.run_overhead_s / f, full_tokens_per_second=e.full_tokens_per_second * f,
        generation_tokens_per_second=e.generation_tokens_per_second * f,
        likelihood_tokens_per_second=e.likelihood_tokens_per_second * f,
        likelihood_scored_tokens_per_second=e.likelihood_scored_tokens_per_second * f,
        model_load_s=e.model_load_s / f, fixed_minutes=e.fixed_minutes / f, reference_gflops=gflops)
    return dataclasses.replace(profile, tokens_per_second_estimate=profile.tokens_per_second_estimate * f,
                               estimate=estimate)


def plan_table(exp: Experiment, gflops: float = 0.0) -> dict:
    """Every grid run (per seed) with the examples and tokens it processes, an estimated cost, and
    for CPU profiles a prediction of the whole book's time. With ``gflops`` (``machine_speed``
    measured now) the times are scaled to the machine's speed now."""
    if gflops and exp.profile.estimate.reference_gflops:
        scaled = Experiment(at_speed(exp.profile, gflops), exp.root)
        table = plan_table(scaled)
        table["speed"] = {"gflops_now": round(gflops, 1), "gflops_then": exp.profile.estimate.reference_gflops,
                          "factor": round(exp.profile.estimate.reference_gflops / gflops, 2)}
        return table
    if gflops:  # measured, but the profile's rates carry no speed to compare it with
        table = plan_table(exp)
        table["speed"] = {"gflops_now": round(gflops, 1), "gflops_then": None, "factor": None}
        return table
    p = exp.profile
    reason = ""
    try:
        exp.split()
        readable = True
    except Exception as exc:  # the Hub is unreachable: estimate from the profile's stated sizes
        readable, reason = False, f"{type(exc).__name__}: {exc}"
    rows = []
    seen_keys: set = set()
    for cell, examples, tokens, key in _cells(exp, readable):
        method, model = cell.method, cell.model
        cfg = p.train_config(method)
        processed = tokens * cfg.epochs
        row = {"run": cell.label, "model": cell.short_model, "method": method,
               "recipe": cell.recipe, "seed": cell.seed, "languages": list(cell.languages), "examples_per_epoch": examples,
               "epochs": cfg.epochs, "tokens_processed": int(processed), "budget_units": cell.budget_units,
               "trains_new_model": key not in seen_keys}
        seen_keys.add(key)
        if p.tokens_per_second_estimate:
            rate = p.estimate.full_tokens_per_second if method == "full" and p.estimate.full_tokens_per_second \
                else p.tokens_per_second_estimate
            seconds = processed / rate + p.estimate.run_overhead_s
            row["cpu_minutes"] = round(seconds / 60, 2)
        if p.estimate_tflops:
            params = p.grid.model_params_billions.get(model, 0.0) * 1e9
            # 6 N FLOPs per token for full tuning; LoRA skips the frozen weights' gradients (~4 N).
            flops = (6 if method == "full" else 4) * params * processed
            row["gpu_hours"] = round(flops / (p.estimate_tflops * 1e12 * p.estimate_mfu) / 3600, 2)
        rows.append(row)
    new = [r for r in rows if r["trains_new_model"]]
    totals = {"runs": len(rows), "models_trained": len(new), "seeds": len(p.grid.seeds),
              "tokens_processed": sum(r["tokens_processed"] for r in new)}
    for key in ("cpu_minutes", "gpu_hours"):
        if rows and key in rows[0]:
            totals[key] = round(sum(r[key] for r in new), 1)
    evaluation = evaluation_estimate(exp, readable)
    if evaluation and "cpu_minutes" in totals:
        totals["evaluation_minutes"] = round(sum(evaluation[k] for k in ("load", "generation", "likelihood")) / 60, 1)
        totals["book_minutes"] = round(totals["cpu_minutes"] + totals["evaluation_minutes"] + p.estimate.fixed_minutes, 1)
    units: dict[str, float] = {}
    for r in rows:
        if r["seed"] == p.grid.seeds[0]:
            k = f"{r['model']}/{r['method']}/{r['recipe']}"
            units[k] = units.get(k, 0) + r["budget_units"]
    return {"profile": p.name, "device": p.estimate_device, "data_read": readable,
            "reference_gflops": p.estimate.reference_gflops,
            "note": "" if readable else f"data not readable here ({reason}); sizes from the profile's estimates",
            "runs": rows, "budget_units": units, "evaluation": evaluation, "totals": totals}


def format_plan(table: dict) -> str:
    rows = table["runs"]
    extra = [k for k in ("cpu_minutes", "gpu_hours") if rows and k in rows[0]]
    head = f"{'run':<34}{'model':<14}{'examples':>9}{'epochs':>7}{'tokens':>13}{'units':>6}" + "".join(
        f"{k:>13}" for k in extra)
    lines = [f"profile {table['profile']}" + (f", estimates for {table['device']}" if table["device"] else ""), head]
    for r in rows:
        if not r["trains_new_model"]:
            lines.append(f"{r['run']:<34}{r['model']:<14}  (the same model as monolingual-en: no extra cost)")
            continue
        lines.append(f"{r['run']:<34}{r['model']:<14}{r['examples_per_epoch']:>9}{r['epochs']:>7}"
                     f"{r['tokens_processed']:>13}{r['budget_units']:>6.0f}" + "".join(f"{r[k]:>13}" for k in extra))
    t = table["totals"]
    lines.append(f"total: {t['runs']} runs ({t['seeds']} seeds), {t['models_trained']} models trained, "
                 f"{t['tokens_processed']} tokens" + "".join(f", {k.replace('_', ' ')} {t[k]}" for k in extra))
    if "book_minutes" in t:
        ev = table["evaluation"]
        lines.append(f"evaluation: {ev['models']} models, {t['evaluation_minutes']} minutes (load {ev['load']} s, "
                     f"answers {ev['generation']} s, likelihood {ev['likelihood']} s)")
        lines.append(f"predicted book time from empty artefacts: {t['book_minutes']} minutes "
                     "(training + evaluation + the other chapters and the HTML build)")
        speed = table.get("speed")
        if speed and speed["factor"]:
            lines.append(f"scaled to this machine now: {speed['gflops_now']} GFLOP/s measured, "
                         f"{speed['gflops_then']} when the rates were measured (times x {speed['factor']})")
        elif table.get("reference_gflops") and not speed:
            lines.append(f"at the speed the rates were measured ({table['reference_gflops']} GFLOP/s); "
                         "--measure-speed scales the times to this machine now (3 s)")
    speed = table.get("speed")
    if speed and not speed["factor"]:
        lines.append(f"not scaled: this machine measured {speed['gflops_now']} GFLOP/s now, but the profile "
                     "records no speed for its rates (estimate.reference_gflops)")
    if table["note"]:
        lines.append(table["note"])
    return "\n".join(lines)


# --- the disk the plan needs, and what `polyalpaca check` reports when all is well ----------------

_SIZE_IN_NAME = re.compile(r"(\d+)([mb])(\d*)$", re.I)


def model_params_billions(profile: Profile, model: str) -> float | None:
    """A model's size: ``grid.model_params_billions``, else read from its name (gemma-3-270m: 0.27,
    bloom-7b1: 7.1); None when neither says."""
    if model in profile.grid.model_params_billions:
        return profile.grid.model_params_billions[model]
    match = _SIZE_IN_NAME.search(model_short_name(model))
    if not match:
        return None
    whole, unit, fraction = match.groups()
    value = float(f"{whole}.{fraction}" if fraction else whole)
    return value / 1000 if unit.lower() == "m" else value


def free_gb(folder: str | Path) -> float:
    """Free space, in GB, on the disk that holds ``folder`` (or its nearest existing parent)."""
    path = Path(folder).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


def disk_estimate(profile: Profile, plan: dict, folder: str | Path | None = None) -> dict:
    """A rough disk estimate from model sizes. Training writes an fp32 copy of every fully
    fine-tuned model (4 bytes per parameter): ``written_gb``, the most the artefacts hold while the
    book runs. Evaluation removes each once its results are stored, unless
    ``storage.keep_full_models``: ``kept_gb`` is what stays. While a full fine-tune runs, its two
    newest resumable checkpoints (weights and AdamW moments, 12 bytes per parameter each) are kept
    too, and removed when it finishes. LoRA adapters are small; run folders hold no tokenizer
    copy. Models of unknown size are listed, not counted. With ``folder`` (the artefacts folder)
    the free space on its disk is added."""
    sizes = {model: model_params_billions(profile, model) for model in profile.grid.models}
    by_short = {model_short_name(model): model for model in profile.grid.models}
    written_gb, peak_gb, unknown = 0.0, 0.0, sorted(m for m, s in sizes.items() if s is None)
    for row in plan["runs"]:
        billions = sizes.get(by_short.get(row["model"], row["model"]))
        if row["method"] == "full" and row["trains_new_model"] and billions:
            written_gb += 4 * billions
            peak_gb = max(peak_gb, 2 * 12 * billions)
    kept_gb = written_gb if profile.storage.keep_full_models else 0.0
    disk = {"written_gb": round(written_gb, 1), "kept_gb": round(kept_gb, 1), "checkpoints_gb": round(peak_gb, 1),
            "unknown_sizes": unknown}
    if folder is not None:
        disk.update(folder=str(folder), free_gb=round(free_gb(folder), 1))
    return disk


def disk_shortfall(disk: dict) -> str:
    """'' when the artefacts folder's disk has room for ``disk_estimate``'s models and checkpoints;
    otherwise a sentence that says how much is missing. Models already trained there count in the
    estimate, so a resumed build may need less than it says."""
    need = disk["written_gb"] + disk["checkpoints_gb"]
    if "free_gb" not in disk or disk["free_gb"] >= need:
        return ""
    return (f"{disk['folder']} is on a disk with {disk['free_gb']} GB free; this plan's fully fine-tuned models "
            f"and a running fine-tune's checkpoints need up to {need:.1f} GB (models already trained there are "
            "counted too). Free space or choose another folder (--artefacts) before a long run stops on a full disk")


def format_check(profile: Profile, plan: dict, disk: dict) -> str:
    """The lines `polyalpaca check` prints for a profile without problems."""
    t = plan["totals"]
    lines = [f"profile {profile.name}: no problems found",
             f"plan: {t['runs']} runs, {t['models_trained']} models trained, {t['tokens_processed']} training tokens"]
    if "cpu_minutes" in t:
        lines.append(f"time (estimate): {t['cpu_minutes']} CPU minutes of training"
                     + (f" on {plan['device']}" if plan["device"] else ""))
    if "book_minutes" in t:
        lines.append(f"time (estimate): {t['evaluation_minutes']} minutes of evaluation; the whole book from empty "
                     f"artefacts about {t['book_minutes']} minutes (polyalpaca plan shows the parts)")
    if "gpu_hours" in t:
        lines.append(f"time (estimate): {t['gpu_hours']} GPU hours of training"
                     + (f" on {plan['device']}" if plan["device"] else ""))
    if "cpu_minutes" not in t and "gpu_hours" not in t:
        lines.append("time: no estimate (the profile sets neither tokens_per_second_estimate nor estimate_tflops)")
    keep = profile.storage.keep_full_models
    lines.append(f"disk (estimate from model sizes): {disk['written_gb']} GB of fully fine-tuned models while the book "
                 f"runs, {disk['kept_gb']} GB of them kept after evaluation (storage.keep_full_models = "
                 f"{str(keep).lower()}), up to {disk['checkpoints_gb']} GB more for a running full fine-tune's "
                 "checkpoints; LoRA adapters are small")
    if disk["unknown_sizes"]:
        lines.append("  not counted, size unknown (set grid.model_params_billions): " + ", ".join(disk["unknown_sizes"]))
    if "free_gb" in disk:
        lines.append(f"  free on the artefacts folder's disk ({disk['folder']}): {disk['free_gb']} GB")
        if disk_shortfall(disk):
            lines.append("WARNING: " + disk_shortfall(disk))
    if plan["note"]:
        lines.append(plan["note"])
    return "\n".join(lines)
