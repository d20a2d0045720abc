"""Weights-only loading of ``.pt`` files: the one place the package calls ``torch.load``.

``torch.load(weights_only=True)`` unpickles tensors, containers and plain numbers/strings only, so a file that
pickles a callable (``os.system``...) is refused instead of run. Every failure becomes a :class:`CheckpointError`
whose message is one line naming the file and what was expected.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, damaged, of the wrong kind, or holds more than weights."""


def load_weights(path: str | Path, expected: str, map_location: str | torch.device = "cpu", *,
                 allow: tuple[type, ...] = (), mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; ``expected`` says what the file should be (for the message).

    ``allow``: plain data classes (no code runs when they are rebuilt) a file may pickle beside torch's own, e.g.
    the ``argparse.Namespace`` the VideoMAE code base saves. ``mmap``: map the tensors instead of reading them.
    Raises CheckpointError naming the file: missing, not a torch file (random bytes, text), or a pickle that
    needs more than tensors and plain values (refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected {expected})")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's own message suggests loading it without weights_only, which would run what the file pickles
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(f"{path}: refused to load {expected}: it pickles {found.group(1)}, not only "
                                  f"tensors and plain values (a weights-only load never calls what a file pickles)") from None
        raise CheckpointError(f"{path}: not a torch weights file (expected {expected}): {_what_it_is(path)}") from None
    except Exception:  # noqa: BLE001 - random bytes or text fail in many ways inside torch's reader
        raise CheckpointError(f"{path}: not a torch weights file (expected {expected}): {_what_it_is(path)}") from None


def _what_it_is(path: Path) -> str:
    """What an unreadable file looks like, from its first bytes (torch's own errors name its reader's internals)."""
    with path.open("rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, as torch.save writes, but truncated or damaged (its directory is unreadable)"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "a pickle, as an old torch.save writes, but truncated or damaged"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:   # a character cut at the 512th byte still counts as text
        text = head[:e.start].decode("utf-8") if e.start >= len(head) - 3 else None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        return f"a text file (it starts {text[:40]!r})"
    return f"neither a zip archive nor a pickle (it starts with bytes {head[:8].hex(' ')})"
