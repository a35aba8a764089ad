"""The package's layers hold by test: the import contract in pyproject.toml (import-linter) names
every module, and it is kept; no private name (``_x``) is imported or used across modules."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "polyalpaca"


def _contract() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]


def test_the_import_contract_names_every_module():
    named = {m.strip() for layer in _contract()["layers"] for m in layer.split("|")}
    modules = {f"polyalpaca.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert modules == named, f"missing from the contract: {sorted(modules - named)}; gone: {sorted(named - modules)}"


def test_the_import_contract_is_kept():
    out = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config", "pyproject.toml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_no_private_name_crosses_a_module():
    """Neither ``from .x import _y`` in the package nor ``obj._y(`` in a chapter's code or solutions."""
    crossing = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("polyalpaca")):
                crossing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell["source"])
            crossing += [f"{path.name}: {m}" for m in re.findall(r"\b[a-z_]\w*\._[a-z]\w*\(", source)]
    assert not crossing, crossing


def test_the_command_line_and_the_checks_load_no_heavy_library():
    """`polyalpaca --help`, `check` and the grid's description import nothing that loads torch,
    transformers, openai or pandas: those stay inside the commands and stages that need them."""
    code = ("import sys, polyalpaca.cli, polyalpaca.grid, polyalpaca.planning, polyalpaca.slurm; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'openai', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
