"""Where a check meets the student's code: call it directly, record what it returns, or replay that record.

Every check calls student code only through :func:`ask`. In a notebook that is
a plain call. When a submission is graded, the sandboxed kernel runs the
instructor's test cells in *recording* mode: every answer of the student's
code (a value, or the exception it raised) is written to a tape, with a digest
of the inputs the check gave it. The grader then runs the same test cells in
its own process in *replay* mode: :func:`ask` returns the taped answers, the
check compares them with values the grader computes itself, and only that
verdict counts. Whatever the student's kernel did to the checks, to torch or to
IPython can change the tape, never the comparison.

A ``salt`` drawn at grading time changes every random input (sizes and values),
so the inputs are not known before grading.
"""

from __future__ import annotations

import contextvars
import hashlib
import numbers
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

MAX_ITEMS = 10_000  # containers and tensors above this are not taped (an answer here is small)
MAX_TEXT = 2_000


class StudentRaised(Exception):
    """Replays an exception that the student's code raised while it was recorded."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class TapeMismatch(AssertionError):
    """The recorded answers do not belong to this check's inputs (or there are none left)."""


class Direct:
    """Call the student's code (the notebook's own checks)."""

    salt = 0

    def ask(self, label: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return fn(*args, **kwargs)


class Recording(Direct):
    """Call the student's code and append ``(label, digest, answer)`` to ``tape``."""

    def __init__(self, salt: int) -> None:
        self.salt, self.tape = salt, []

    def ask(self, label: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        entry: dict[str, Any] = {"label": label, "digest": digest(args, kwargs)}
        self.tape.append(entry)
        try:
            out = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 -- taped, then raised as before
            entry.update(kind="raise", name=type(exc).__name__, message=str(exc)[:MAX_TEXT])
            raise
        entry.update(kind="value", value=plain(out))
        return out


class Replaying(Direct):
    """Answer from a tape recorded in the student's kernel; checks that the inputs match."""

    def __init__(self, tape: list, salt: int) -> None:
        self.salt, self._tape = salt, iter(tape)

    def ask(self, label: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        entry = next(self._tape, None)
        if not isinstance(entry, dict) or entry.get("label") != label:
            raise TapeMismatch(f"no recorded answer of {label} (the kernel stopped or skipped this test)")
        if entry.get("digest") != digest(args, kwargs):
            raise TapeMismatch(f"the recorded answer of {label} was computed on other inputs than the grader's")
        if entry.get("kind") == "raise":
            name, message = str(entry.get("name")), str(entry.get("message"))
            if name == "NotImplementedError":
                raise NotImplementedError(message)
            raise StudentRaised(name, message)
        if entry.get("kind") != "value":
            raise TapeMismatch(f"the recorded answer of {label} is incomplete")
        return entry.get("value")


_MODE: contextvars.ContextVar[Direct] = contextvars.ContextVar("esa_tutorial_course_mode", default=Direct())


@contextmanager
def mode(m: Direct) -> Iterator[Direct]:
    """Run the checks inside the block in mode ``m``."""
    token = _MODE.set(m)
    try:
        yield m
    finally:
        _MODE.reset(token)


def ask(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, recorded or replayed by the current mode."""
    return _MODE.get().ask(label, fn, args, kwargs)


def salt() -> int:
    """0 in a notebook; the grading-time random salt when recording or replaying."""
    return _MODE.get().salt


def digest(args: tuple, kwargs: dict) -> str:
    """A fingerprint of the inputs a check gives the student's code (callables are left out)."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}".encode())
            for o in obj:
                feed(o)
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(f"K{k}".encode())
                feed(obj[k])
        elif callable(obj) or obj is None:
            h.update(b"-")
        else:
            h.update(repr(obj).encode())

    feed(list(args))
    feed(kwargs)
    return h.hexdigest()


def plain(obj: Any, depth: int = 0) -> Any:
    """``obj`` as data that ``torch.load(weights_only=True)`` reads back: tensors, numbers, text, containers.

    Anything else becomes ``{"unrecordable": <type name>}``, which no check accepts.
    """
    if depth > 6:
        return {"unrecordable": "nested too deeply"}
    if isinstance(obj, torch.Tensor):
        if obj.numel() > 10 * MAX_ITEMS:
            return {"unrecordable": f"tensor of {obj.numel()} elements"}
        return obj.detach().cpu().as_subclass(torch.Tensor).contiguous().clone()
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, str):
        return obj[:MAX_TEXT]
    if isinstance(obj, (list, tuple)) and len(obj) <= MAX_ITEMS:
        items = [plain(o, depth + 1) for o in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, (set, frozenset)) and len(obj) <= MAX_ITEMS:
        return sorted((plain(o, depth + 1) for o in obj), key=repr)  # as a list: sets are not taped
    if isinstance(obj, dict) and len(obj) <= MAX_ITEMS:
        return {str(k): plain(v, depth + 1) for k, v in obj.items()}
    return {"unrecordable": type(obj).__name__}
