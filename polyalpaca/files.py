"""Files: the one home of atomic writes and JSONL reading.

Every write goes to a temporary file in the target's folder, is flushed to disk and then
renamed over the target, so a crash or a kill never leaves half a file where a whole one is
expected (a reader sees the old file or the new one). Folders built in several steps (a
converted model) are built under ``NAME.partial`` and renamed when complete.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file opened for writing (``"w"`` UTF-8 text or ``"wb"``) that replaces ``path`` only
    when the ``with`` block ends without an error; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, and unique to this process and thread, so concurrent writers never share it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path) as fh:
        fh.write(text)
    return Path(path)


def _plain(row: Any) -> Any:
    return asdict(row) if is_dataclass(row) and not isinstance(row, type) else row


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8 unescaped, a final newline) atomically; a dataclass is
    converted, and values JSON has no type for (a ``Path``, a date) are written as their ``str``."""
    return atomic_write_text(path, json.dumps(_plain(obj), indent=indent, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write dicts or dataclasses as JSONL, one object a line, atomically."""
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
    return Path(path)


class JsonlError(ValueError):
    """A line of a JSONL file that is not valid JSON; the message names file, line and column."""

    def __init__(self, path: str | Path, line: int, msg: str, column: int):
        self.path, self.line, self.msg, self.column = str(path), line, msg, column
        super().__init__(f"{path}:{line}: not valid JSON ({msg} at column {column})")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of a JSONL file. A line that is not
    valid JSON gives a ``JsonlError`` as its value (not raised), so a caller can skip it and
    read on; ``read_jsonl`` raises it."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, JsonlError(path, number, exc.msg, exc.colno)


def read_jsonl(path: str | Path) -> list[Any]:
    """Every value of a JSONL file (blank lines skipped); a bad line raises ``JsonlError``."""
    rows = []
    for _, value in iter_jsonl(path):
        if isinstance(value, JsonlError):
            raise value
        rows.append(value)
    return rows


def tree_size(path: str | Path) -> int:
    """Bytes of the files under ``path`` (a file: its size; missing: 0). Links are not followed."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def atomic_folder(build: Callable[[Path], None], final: str | Path) -> Path:
    """``final``, built once: ``build(folder)`` fills ``FINAL.partial``, which is then renamed,
    so a crash never leaves half a folder under the final name. An existing ``final`` is kept."""
    final = Path(final)
    if final.exists():
        return final
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    build(partial)
    partial.rename(final)
    return final


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock (``folder_lock`` with ``wait=False``)."""


@contextmanager
def folder_lock(folder: str | Path, wait: bool = True, what: str = "writing") -> Iterator[Path]:
    """One writer at a time in ``folder``: an exclusive ``flock`` on ``folder/.lock`` for the
    ``with`` block. The operating system releases it when the holder ends, however it ends (a
    kill included), so a stale lock never blocks. A second process waits, saying once why
    (``wait=True``), or gets ``FolderBusy`` at once (``wait=False``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if not wait:
                raise FolderBusy(f"{folder} is being written by {holder}; wait until it ends") from None
            print(f"[polyalpaca] {folder} is being written by {holder}: waiting until it is done before "
                  f"{what}", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()}\n")
        fh.flush()
        try:
            yield folder
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
