"""Progress of long work, readable in an executed notebook and in the terminal that builds the book.

``Progress.step`` prints one line per finished item (in a chapter, that line is kept in the
executed notebook) with the time so far and an estimate of the time left. When the book is
built, ``polyalpaca.book`` sets ``POLYALPACA_PROGRESS_FILE``; every line is then also appended
to that file, which the builder prints in the terminal as the chapter runs.
"""
from __future__ import annotations

import os
import time
import warnings

PROGRESS_FILE_ENV = "POLYALPACA_PROGRESS_FILE"

# Library notices that every command would print again and that ask nothing of the reader: each
# is matched by its category, its message and the library that issues it, so any other warning
# (ours or a library's) is still shown. (category, message regex, module regex)
KNOWN_LIBRARY_NOTICES = (
    # PEFT and TRL read the deprecated alias while wrapping a model (transformers 5.x, removed in v6).
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
)


def quiet_library_warnings() -> None:
    """Hide the library notices in ``KNOWN_LIBRARY_NOTICES``, and nothing else."""
    for category, message, module in KNOWN_LIBRARY_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def report(line: str) -> None:
    """Print ``line`` and, when the book builder listens, pass it on to the terminal."""
    print(line, flush=True)
    target = os.environ.get(PROGRESS_FILE_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class Progress:
    """Counts finished items out of ``total``; items found in the cache (``cached=True``) take
    no time and are left out of the estimate of the time left."""

    def __init__(self, total: int, label: str):
        self.total, self.done, self.label = total, 0, label
        self.start = time.time()
        self.computed, self.computed_seconds = 0, 0.0
        self._last = self.start

    def step(self, what: str, n: int = 1, cached: bool = False) -> None:
        now = time.time()
        self.done += n
        if not cached:
            self.computed += n
            self.computed_seconds += now - self._last
        self._last = now
        left = self.total - self.done
        eta = ""
        if left and self.computed:
            eta = f", about {_duration(self.computed_seconds / self.computed * left)} left"
        report(f"[{self.done}/{self.total}] {self.label}: {what} ({_duration(now - self.start)}{eta})")
