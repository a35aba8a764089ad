"""Where PolyAlpaca keeps things: the cache (converted models, downloads) and run artefacts.

Both are outside git. ``POLYALPACA_CACHE`` moves the cache (default ``~/.cache/polyalpaca``);
``POLYALPACA_ARTEFACTS`` moves the artefacts (default ``artefacts/`` in the project root);
``POLYALPACA_DATA`` replaces the embedded data folder by another with the same layout
(``train/{lang}.jsonl``, ``test/{lang}.jsonl``).
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
DATA_DIR = Path(os.environ.get("POLYALPACA_DATA", PACKAGE_DIR / "data"))  # the embedded data set
RESOURCES_DIR = PACKAGE_DIR / "resources"


def cache_dir() -> Path:
    path = Path(os.environ.get("POLYALPACA_CACHE", Path.home() / ".cache" / "polyalpaca"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def artefacts_root() -> Path:
    return Path(os.environ.get("POLYALPACA_ARTEFACTS", PROJECT_ROOT / "artefacts"))
