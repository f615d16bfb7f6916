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
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from ..checkpoints import CheckpointError, stored_zip

MAX_ITEMS = 10_000  # containers and tensors above this are not taped (an answer here is small)
MAX_TEXT = 2_000
MAX_TENSOR = 10 * MAX_ITEMS  # elements of one taped tensor
MAX_DEPTH = 8  # plain() stops at 6 levels inside an entry; the tape and its entries add two
# What one tape may hold in all, counted as a tree (a value shared twice counts twice), so that
# judging it costs at most this much whatever the sandbox wrote into the file.
MAX_TAPE_ITEMS = 200_000
MAX_TAPE_ELEMENTS = 4_000_000
MAX_ZIP_ENTRIES = 64
TAPE_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
                         torch.int16, torch.int32, torch.int64, torch.bool})


class TapeError(ValueError):
    """A tape that is not what :class:`Recording` writes; the message says what is wrong."""


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


# --------------------------------------------------------------------------- reading a tape back


def load(data: bytes, max_bytes: int) -> list:
    """The entries of a tape file's bytes, checked before and after loading; raises :class:`TapeError`.

    The sandbox can rewrite its tapes, so nothing in ``data`` is trusted. Before
    anything is loaded: a zip of at most :data:`MAX_ZIP_ENTRIES` stored (never
    compressed) members of at most ``max_bytes`` together, copied into a fresh
    zip so that torch reads exactly what was checked
    (:func:`esa_tutorial.checkpoints.stored_zip`). After ``torch.load``
    (``weights_only``: no code): a list of at most :data:`MAX_TAPE_ITEMS`
    numbers, strings, containers and dense tensors that own their elements
    (no stride-0 views, at most :data:`MAX_TENSOR` elements each).
    """
    try:
        fresh = stored_zip(data, "the tape", max_bytes, MAX_ZIP_ENTRIES)
    except CheckpointError as exc:
        raise TapeError(str(exc).replace("the tape ", "", 1)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a forged tape may warn before it fails
            entries = torch.load(fresh, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- whatever torch says, it is no tape
        raise TapeError(f"not readable as a tape ({type(exc).__name__})") from None
    if not isinstance(entries, list):
        raise TapeError(f"a tape is a list, this one is a {type(entries).__name__}")
    check_recorded(entries)
    return entries


def check_recorded(obj: Any) -> None:
    """Raise :class:`TapeError` unless ``obj`` is data that :func:`plain` could have written, within the limits."""
    items = elements = 0

    def walk(o: Any, depth: int) -> None:
        nonlocal items, elements
        items += 1
        if items > MAX_TAPE_ITEMS:
            raise TapeError(f"more than {MAX_TAPE_ITEMS} recorded values")
        if depth > MAX_DEPTH:
            raise TapeError(f"nested deeper than {MAX_DEPTH} levels")
        if o is None or isinstance(o, (bool, float)):
            return
        if isinstance(o, int):
            if not -(2**63) <= o < 2**63:
                raise TapeError("an integer beyond 64 bits")
            return
        if isinstance(o, str):
            if len(o) > MAX_TEXT:
                raise TapeError(f"a text longer than {MAX_TEXT} characters")
            return
        if isinstance(o, torch.Tensor):
            _check_tensor(o)
            elements += o.numel()
            if elements > MAX_TAPE_ELEMENTS:
                raise TapeError(f"more than {MAX_TAPE_ELEMENTS} tensor elements in all")
            return
        if isinstance(o, (list, tuple, dict)):
            if len(o) > MAX_ITEMS:
                raise TapeError(f"a container of {len(o)} items (at most {MAX_ITEMS} are taped)")
            for k, v in (o.items() if isinstance(o, dict) else enumerate(o)):
                if isinstance(o, dict) and not isinstance(k, str):
                    raise TapeError(f"a dict key of type {type(k).__name__}")
                walk(v, depth + 1)
            return
        raise TapeError(f"a value of type {type(o).__name__}")

    walk(obj, 0)


def _check_tensor(t: torch.Tensor) -> None:
    """A dense CPU tensor as :func:`plain` writes it: contiguous, its own elements, a plain dtype."""
    if type(t) is not torch.Tensor or t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
        raise TapeError(f"a tensor of kind {type(t).__name__}/{t.layout}/{t.device.type}")
    if t.dtype not in TAPE_DTYPES:
        raise TapeError(f"a tensor of dtype {t.dtype}")
    if t.numel() > MAX_TENSOR:
        raise TapeError(f"a tensor of {t.numel()} elements (at most {MAX_TENSOR} are taped)")
    if not t.is_contiguous() or t.storage_offset() != 0 or t.untyped_storage().nbytes() < t.numel() * t.element_size():
        raise TapeError(f"a tensor of shape {tuple(t.shape)} that does not own its elements (a strided view)")
