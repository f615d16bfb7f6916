"""Checks that students run on their own code: ``check_ppm(my_ppm)``, ``check_esa(MyESA)``, ...

Each check runs the student's function or class on several random shapes and
weights, compares it with the package's version, and either returns a short
success message or raises :class:`CheckFailed` whose message says what went
wrong in the student's terms: the case that failed, expected against got, and
a hint for the common mistakes. An exception inside the student's code is
caught and reported with the student's own line, never as a bare traceback.

``CheckFailed`` is an ``AssertionError``, so nbgrader, otter-grader and
``python -m esa_tutorial.course grade`` all count a failing check as a failed test.
"""

from __future__ import annotations

import functools
import itertools
import math
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from ..nn.attention import MHSA
from .. import LCA
from ..cost import attention_matrix_bytes, count_flops, flops_by_operator
from ..nn.esa import ESA
from ..nn.ldnet import LDNet
from ..nn.ppm import PPM, adaptive_bins, num_tokens
from .tape import StudentRaised, TapeMismatch, ask, salt

__all__ = [
    "CheckFailed",
    "Passed",
    "check_adaptive_bins",
    "check_attention_bytes",
    "check_esa",
    "check_esa_flops",
    "check_fold_query",
    "check_lca_shortcut",
    "check_lca_zero_gradients",
    "check_ldnet_measurements",
    "check_mhsa_flops",
    "check_pool_then_project",
    "check_ppm",
]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


class CheckFailed(AssertionError):
    """A student's code disagrees with the package; the message says where and how."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the frames inside the check would only
        # hide the message, and the student's own line is already in it.
        return [f"CheckFailed: {self}"]


class Passed(str):
    """The success message; shows without quotes as the last value of a notebook cell."""

    def __repr__(self) -> str:
        return str(self)


# --------------------------------------------------------------------------- helpers


def _student_line(exc: BaseException) -> str:
    """``line N: <code>`` of the innermost frame of the traceback that is the student's own code."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith((_PACKAGE_DIR, _TORCH_DIR)) and "site-packages" not in f.filename
    ]
    if not frames:
        return ""
    f = frames[-1]
    code = f" `{f.line.strip()}`" if f.line else ""
    return f"\n  at line {f.lineno} of your cell:{code}"


@contextmanager
def _student_code(what: str, case: str) -> Iterator[None]:
    """Turn any exception raised by student code into a :class:`CheckFailed` that says where."""
    try:
        yield
    except (CheckFailed, TapeMismatch):
        raise
    except NotImplementedError:
        raise CheckFailed(
            f"{what} is not implemented yet (it raised NotImplementedError).\n"
            "  Replace the line `raise NotImplementedError()` with your code, then run this check again."
        ) from None
    except Exception as exc:  # noqa: BLE001 -- any student error becomes feedback
        name = exc.name if isinstance(exc, StudentRaised) else type(exc).__name__
        raise CheckFailed(f"{what} raised {name}: {exc}\n  on {case}{_student_line(exc)}") from None


def _as_tensor(got: object, what: str, case: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{what} should return a torch.Tensor, but returned {type(got).__name__}\n  on {case}")
    return got


def _as_number(got: object, what: str, case: str) -> float:
    """A count the student returned, as a Python number: an int, a float or a one-element tensor.

    Anything else (a list, a tensor of many elements, a string) fails here, so
    that no comparison with it can broadcast or be ambiguous.
    """
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_complex():
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise CheckFailed(f"{what} should return a number, got {type(got).__name__}\n  on {case}")
    if not math.isfinite(got):
        raise CheckFailed(f"{what} returned {got}, expected a finite count\n  on {case}")
    return got


def _compare(got: torch.Tensor, expected: torch.Tensor, what: str, case: str, hint: str = "") -> None:
    """Raise :class:`CheckFailed` naming the largest error unless ``got`` is close to ``expected``.

    Shape and kind of number come first: ``allclose`` broadcasts, so an empty
    or a one-element tensor would otherwise match anything.
    """
    if tuple(got.shape) != tuple(expected.shape):
        raise CheckFailed(f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}\n  on {case}")
    if got.is_complex() or (expected.is_floating_point() and not got.is_floating_point()):
        raise CheckFailed(f"{what} has dtype {got.dtype}, expected a real floating-point tensor like "
                          f"{expected.dtype}\n  on {case}")
    got = got.detach().to(device=expected.device, dtype=expected.dtype)
    if torch.isnan(got).any():
        raise CheckFailed(f"{what} returned NaN values\n  on {case}")
    if torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return
    err = (got - expected).abs()
    where = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    raise CheckFailed(
        f"{what} has the right shape but wrong values\n  on {case}:\n"
        f"  largest error at index {where}: expected {expected[where].item():.5f}, "
        f"got {got[where].item():.5f}" + (f"\n  Hint: {hint}" if hint else "")
    )


def _random(shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _gen(seed: int) -> torch.Generator:
    """The generator of a check's inputs; the grading-time salt (0 in a notebook) changes them all."""
    return torch.Generator().manual_seed(seed + salt())


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch inside the block without disturbing the student's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _built(make: Callable[..., nn.Module], configs: Sequence[dict], seed: int) -> Iterator[tuple[nn.Module, dict, tuple]]:
    """``(module, kwargs, input shape)`` per configuration; each module's weights drawn from its own seed."""
    for i, cfg in enumerate(configs):
        cfg = dict(cfg)
        shape = cfg.pop("shape")
        with _seeded(seed + i + salt()):
            module = make(**cfg)
        yield module, cfg, shape


def _keeps_rng(check: Callable[..., Passed]) -> Callable[..., Passed]:
    """Run a check without touching the student's random state (their module's init draws from it)."""

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> Passed:
        __tracebackhide__ = True
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)

    return wrapper


def _passed(name: str, n: int, extra: str = "") -> Passed:
    return Passed(f"✓ {name} passed on {n} cases{extra}.")


class _OpRecorder(TorchFunctionMode):
    """Record the names of the torch functions called inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


# --------------------------------------------------------------------------- exercise 1: PPM

_BIN_CASES = ((8, 4), (7, 3), (9, 6), (5, 5), (2, 5), (1, 3), (10, 3))


@_keeps_rng
def check_adaptive_bins(fn: Callable[[int, int], Sequence[tuple[int, int]]]) -> Passed:
    """Check ``fn(length, bins)`` against :func:`~esa_tutorial.adaptive_bins` (half-open ranges)."""
    __tracebackhide__ = True
    cases = _BIN_CASES
    if salt():
        gen = _gen(0)
        cases = tuple((int(a), int(b)) for a, b in torch.randint(1, 13, (len(_BIN_CASES), 2), generator=gen))
    for length, bins in cases:
        case = f"length={length}, bins={bins}"
        with _student_code("your bins function", case):
            got = ask("your bins function", fn, length, bins)
        expected = adaptive_bins(length, bins)
        try:
            got = [(int(a), int(b)) for a, b in got]
        except (TypeError, ValueError):
            raise CheckFailed(
                f"your bins function should return a list of (start, stop) pairs, got {got!r}\n  on {case}"
            ) from None
        if got == expected:
            continue
        hint = "bin i covers [floor(i*length/bins), ceil((i+1)*length/bins)): half-open, so stop is one past the end."
        if len(got) != bins:
            hint = f"there must be exactly {bins} bins, one per cell of the grid."
        elif [a for a, _ in got] == [a for a, _ in expected] and [b for _, b in got] == [
            (i + 1) * length // bins for i in range(bins)
        ]:
            hint = "your stops round down; adaptive pooling rounds the stop up (ceil), so every pixel is covered and neighbouring bins may overlap."
        elif all(b - a >= 1 for a, b in expected) and any(b - a < 1 for a, b in got):
            hint = "every bin must hold at least one pixel, even when bins > length."
        raise CheckFailed(f"wrong bins for {case}:\n  expected {expected}\n  got      {got}\n  Hint: {hint}")
    return _passed("check_adaptive_bins", len(cases))


_PPM_SHAPES = ((2, 3, 15, 15), (1, 4, 7, 9), (2, 2, 3, 4), (1, 3, 1, 1), (1, 2, 12, 5))


def _ppm_hint(got: torch.Tensor, x: torch.Tensor, sizes: tuple[int, ...]) -> str:
    """A hint for the usual PPM mistakes, found by comparing against variants of the right answer."""
    transposed = torch.cat([F.adaptive_avg_pool2d(x, s).transpose(-1, -2).flatten(2) for s in sizes], -1)
    if got.shape == transposed.shape and torch.allclose(got, transposed, atol=1e-5):
        return "your tokens are column-major; flatten each grid row by row (row-major, as .flatten(2) does)."
    if any(x.shape[-1] % s or x.shape[-2] % s for s in sizes):
        return (
            f"{tuple(x.shape[-2:])} is not a multiple of every grid size: bin i along an axis of length L "
            "covers [floor(i*L/s), ceil((i+1)*L/s)), so bins overlap; average each bin by its own size."
        )
    return "tokens go grid by grid in the order of pooling_sizes, each grid row-major."


@_keeps_rng
def check_ppm(
    fn: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor],
    pooling_sizes: Sequence[int] = (1, 3, 5),
    seed: int = 0,
    allow_adaptive_pool: bool = True,
) -> Passed:
    """Check ``fn(x, pooling_sizes)``: (B, C, H, W) -> (B, C, sum(s^2)) against :class:`~esa_tutorial.PPM`.

    ``allow_adaptive_pool=False`` also fails if ``fn`` calls torch's adaptive
    average pooling (for the exercise that asks to average the bins by hand).
    """
    __tracebackhide__ = True
    sizes = tuple(pooling_sizes)
    gen = _gen(seed)
    for shape in _PPM_SHAPES:
        x = _random(shape, gen)
        case = f"an input of shape {shape} with pooling_sizes={sizes}"
        with _student_code("your PPM", case), _OpRecorder() as rec:
            got = _as_tensor(ask("your PPM", fn, x.clone(), sizes), "your PPM", case)
        if not allow_adaptive_pool and "adaptive_avg_pool2d" in rec.ops:
            raise CheckFailed(
                "your PPM calls torch's adaptive average pooling; this exercise asks you to average "
                "each bin yourself (use your bins function and .mean over the bin)."
            )
        expected = PPM(sizes)(x)
        if got.shape != expected.shape:
            b, c = shape[:2]
            hint = ""
            if got.dim() == 3 and got.shape[-1] == sum(sizes):
                hint = f"\n  Hint: you have sum(s) = {sum(sizes)} tokens; an s x s grid has s*s cells."
            elif got.dim() == 3 and tuple(got.shape) == (b, expected.shape[2], c):
                hint = "\n  Hint: your axes are (B, tokens, C); PPM returns (B, C, tokens)."
            elif got.dim() != 3:
                hint = "\n  Hint: flatten each s x s grid to s*s tokens and concatenate the grids on the last axis."
            raise CheckFailed(
                f"your output has shape {tuple(got.shape)} but PPM with sizes {sizes} gives "
                f"{num_tokens(sizes)} tokens per channel: expected {tuple(expected.shape)} "
                f"for an input of shape {shape}{hint}"
            )
        _compare(got, expected, "your PPM", case, _ppm_hint(got.detach().float(), x, sizes))
    return _passed("check_ppm", len(_PPM_SHAPES), f" (pooling_sizes={sizes})")


# --------------------------------------------------------------------------- exercise 2: ESA forward

_ESA_CONFIGS = (
    dict(dim=8, heads=2, dim_head=4, pooling_sizes=(1, 3, 5), shape=(2, 8, 7, 9)),
    dict(dim=6, heads=3, dim_head=5, pooling_sizes=(1, 2), shape=(1, 6, 4, 4)),
    dict(dim=16, heads=4, dim_head=8, pooling_sizes=(2, 4), shape=(2, 16, 5, 3)),
)


def _esa_hint(got: torch.Tensor, ref: ESA, x: torch.Tensor) -> str:
    """Name the mistake when ``got`` equals ESA with one thing changed."""
    variants: list[tuple[str, Callable[[ESA], None]]] = [
        ("you left out the scale 1/sqrt(dim_head) of the scores.", lambda m: setattr(m, "scale", 1.0)),
        ("you scaled the scores by 1/dim_head; the scale is 1/sqrt(dim_head).",
         lambda m: setattr(m, "scale", 1.0 / m.dim_head)),
        ("you left out the bias of the output projection (call self.to_out, not only its weight).",
         lambda m: m.to_out[0].bias.data.zero_()),
    ]
    for message, change in variants:
        variant = ESA(ref.dim, ref.heads, ref.dim_head, pooling_sizes=ref.ppm.pooling_sizes, impl="reference")
        variant.load_state_dict(ref.state_dict())
        change(variant)
        with torch.no_grad():
            if torch.allclose(got, variant(x), atol=1e-5):
                return message
    return (
        "follow the steps: q, k, v = to_qkv(x) split in three; pool k and v with the PPM; split heads as "
        "'(h d)'; softmax over the keys (last axis); multiply by v; merge heads; to_out."
    )


def _run_esa(cls: Callable[..., nn.Module], cfg: dict, state: dict, x: torch.Tensor, g: torch.Tensor) -> dict:
    """The student's side of :func:`check_esa`: build ``cls(**cfg)`` with ESA's weights, forward ``x``, backward ``g``.

    Returns the output and the gradients with respect to ``x`` and
    ``to_qkv.weight`` (None where missing), or ``load_error`` with the
    module's own parameter shapes when ESA's weights do not fit.
    """
    try:
        mine = cls(**cfg)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 -- named by the check
        return {"create_error": f"{type(exc).__name__}: {exc}"}
    try:
        mine.load_state_dict(state)
    except Exception:  # noqa: BLE001 -- report the names, not torch's message
        return {"load_error": str({k: tuple(v.shape) for k, v in mine.state_dict().items()})}
    x = x.clone().requires_grad_(True)
    out = mine(x)
    result = {"out": out, "has_graph": isinstance(out, torch.Tensor) and out.grad_fn is not None}
    if result["has_graph"] and out.shape == g.shape:
        try:
            dx, dw = torch.autograd.grad(out, (x, mine.to_qkv.weight), g, allow_unused=True)
        except Exception as exc:  # noqa: BLE001 -- named by the check
            return {**result, "backward_error": f"{type(exc).__name__}: {exc}"}
        result.update(dx=dx, dw=dw)
    else:
        result.update(dx=torch.zeros(()), dw=torch.zeros(()))  # judged by shape or graph first
    return result



@_keeps_rng
def check_esa(cls: Callable[..., nn.Module], seed: int = 0) -> Passed:
    """Check a class ``cls(dim, heads, dim_head, pooling_sizes=...)`` against :class:`~esa_tutorial.ESA`.

    The student's module gets ESA's random weights through ``load_state_dict``
    (so its parameters must be named ``to_qkv``, ``to_out.0`` as in ESA); its
    forward (B, C, H, W) -> (B, H*W, C) must agree in values and in the
    gradients with respect to the input and the weights.
    """
    __tracebackhide__ = True
    gen = _gen(seed)
    for ref, cfg, shape in _built(functools.partial(ESA, impl="reference"), _ESA_CONFIGS, seed):
        case = f"MyESA({', '.join(f'{k}={v}' for k, v in cfg.items())}) on an input of shape {shape}"
        x = _random(shape, gen)
        expected = ref(x.detach().requires_grad_(True))
        g = _random(expected.shape, gen)
        with _student_code("your forward", case):
            got = ask("your module", _run_esa, cls, cfg, ref.state_dict(), x, g)
        if not isinstance(got, dict):
            raise CheckFailed(f"no answer from your module\n  on {case}")
        if got.get("create_error"):
            raise CheckFailed(f"creating your module raised {got['create_error']}\n  on {case}")
        if got.get("load_error"):
            ours = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
            raise CheckFailed(
                f"your module's parameters do not match ESA's, so the check cannot give it ESA's weights\n"
                f"  on {case}:\n  ESA has   {ours}\n  yours has {got['load_error']}"
            )
        out = _as_tensor(got.get("out"), "your forward", case)
        b, c, h, w = shape
        if out.shape != expected.shape:
            hint = ""
            if tuple(out.shape) == (b, c, h * w):
                hint = "\n  Hint: you returned (B, C, H*W); ESA returns one row per pixel: (B, H*W, C)."
            elif tuple(out.shape) == (b, h * w, cfg["heads"] * cfg["dim_head"]):
                hint = "\n  Hint: that is heads*dim_head channels; apply the output projection self.to_out."
            raise CheckFailed(
                f"your forward returned shape {tuple(out.shape)}, expected {tuple(expected.shape)} = "
                f"(B, H*W, C)\n  on {case}{hint}"
            )
        _compare(out, expected.detach(), "your forward", case, _esa_hint(out, ref, x))
        if not got.get("has_graph"):
            raise CheckFailed(
                "your forward's output is cut off from autograd (did you use .detach(), .numpy(), .item() "
                f"or torch.no_grad()?), so LDNet could not train it\n  on {case}"
            )
        if got.get("backward_error"):
            raise CheckFailed(f"backpropagating through your forward raised {got['backward_error']}\n  on {case}")
        xr = x.clone().requires_grad_(True)
        exp_dx, exp_dw = torch.autograd.grad(ref(xr), (xr, ref.to_qkv.weight), g)
        for name, key, ee in (("the input", "dx", exp_dx), ("to_qkv.weight", "dw", exp_dw)):
            gg = got.get(key)
            if gg is None:
                raise CheckFailed(f"your forward does not use {name}: its gradient is missing\n  on {case}")
            _compare(_as_tensor(gg, "a gradient", case), ee, f"the gradient of your forward with respect to {name}", case)
    return _passed("check_esa", len(_ESA_CONFIGS), " (outputs and gradients)")


# --------------------------------------------------------------------------- exercise 3: cost by hand

_COST_CASES = (
    dict(batch=2, dim=32, heads=2, dim_head=16, height=8, width=8, pooling_sizes=(1, 3, 5)),
    dict(batch=1, dim=64, heads=8, dim_head=64, height=14, width=10, pooling_sizes=(1, 3, 5)),
    dict(batch=3, dim=16, heads=4, dim_head=8, height=5, width=7, pooling_sizes=(1, 2, 3, 6)),
)
_OP_NAMES = {
    "convolution": "the 1x1 projection to_qkv",
    "bmm": "the two batched products q·kᵀ and attn·v",
    "addmm": "the output projection to_out",
}


def _cost_cases(seed: int | None) -> tuple[dict, ...]:
    """The fixed cases, or as many random ones drawn from ``seed``."""
    if seed is None and not salt():
        return _COST_CASES
    gen = _gen(seed or 0)

    def pick(*choices: object) -> Any:
        return choices[int(torch.randint(len(choices), (1,), generator=gen))]

    return tuple(
        dict(batch=pick(1, 2, 4), dim=pick(8, 24, 64), heads=pick(1, 2, 8), dim_head=pick(4, 16, 64),
             height=pick(3, 7, 16, 28), width=pick(5, 9, 14), pooling_sizes=pick((1, 3, 5), (1, 2, 3, 6), (2, 4)))
        for _ in _COST_CASES
    )


def _cost_feedback(got: int, parts: dict[str, int], what: str, case: str) -> CheckFailed:
    """Explain a wrong FLOP count with the measured count of every operator."""
    total = sum(parts.values())
    table = "\n".join(f"    {_OP_NAMES.get(op, op)} (aten.{op}): {n:,}" for op, n in parts.items())
    hint = ""
    if 2 * got == total:
        hint = "you counted multiply-adds; FlopCounterMode counts 2 FLOPs per multiply-add."
    else:
        for r in range(1, len(parts)):
            for subset in itertools.combinations(parts, r):
                if got == total - sum(parts[op] for op in subset):
                    hint = "you left out " + " and ".join(_OP_NAMES.get(op, op) for op in subset) + "."
    return CheckFailed(
        f"{what} gives {got:,} but torch's FlopCounterMode measures {total:,}\n  on {case}:\n{table}"
        + (f"\n  Hint: {hint}" if hint else "")
    )


def _check_flops(
    fn: Callable[..., int], module_cls: type, name: str, with_pooling: bool, seed: int | None
) -> Passed:
    for cfg in _cost_cases(seed):
        args = {k: v for k, v in cfg.items() if with_pooling or k != "pooling_sizes"}
        case = ", ".join(f"{k}={v}" for k, v in args.items())
        with _student_code(f"your {name}", case):
            got = ask(f"your {name}", fn, **args)
        got = _as_number(got, f"your {name}", case)
        extra = dict(pooling_sizes=cfg["pooling_sizes"], impl="reference") if with_pooling else {}
        with torch.device("meta"):
            module = module_cls(cfg["dim"], cfg["heads"], cfg["dim_head"], **extra)
            x = torch.empty(cfg["batch"], cfg["dim"], cfg["height"], cfg["width"])
        parts = flops_by_operator(module, x)
        if float(got) != sum(parts.values()):
            raise _cost_feedback(int(got), parts, f"your {name}", case)
    return _passed(f"check_{name}", len(_COST_CASES), " (exact FLOP counts)")


@_keeps_rng
def check_esa_flops(fn: Callable[..., int], seed: int | None = None) -> Passed:
    """Check ``fn(batch, dim, heads, dim_head, height, width, pooling_sizes)``, the FLOPs of ESA's literal form.

    Counted as :mod:`esa_tutorial.cost` counts them (torch's FlopCounterMode):
    matrix products and convolutions, 2 FLOPs per multiply-add. ``seed`` draws
    random sizes instead of the fixed cases.
    """
    __tracebackhide__ = True
    return _check_flops(fn, ESA, "esa_flops", with_pooling=True, seed=seed)


@_keeps_rng
def check_mhsa_flops(fn: Callable[..., int], seed: int | None = None) -> Passed:
    """Check ``fn(batch, dim, heads, dim_head, height, width)``, the FLOPs of full self-attention (MHSA)."""
    __tracebackhide__ = True
    return _check_flops(fn, MHSA, "mhsa_flops", with_pooling=False, seed=seed)


@_keeps_rng
def check_attention_bytes(fn: Callable[..., int], seed: int | None = None) -> Passed:
    """Check ``fn(batch, heads, n_queries, n_keys, bytes_per_element)`` against measured attention matrices.

    Measured with :func:`esa_tutorial.cost.attention_matrix_bytes` on ESA and
    MHSA, in float32 and float64.
    """
    __tracebackhide__ = True
    n = 0
    for cfg, dtype in itertools.product(_cost_cases(seed), (torch.float32, torch.float64)):
        for module_cls in (ESA, MHSA):
            extra = dict(pooling_sizes=cfg["pooling_sizes"]) if module_cls is ESA else {}
            with torch.device("meta"):
                module = module_cls(cfg["dim"], cfg["heads"], cfg["dim_head"], **extra).to(dtype)
                x = torch.empty(cfg["batch"], cfg["dim"], cfg["height"], cfg["width"], dtype=dtype)
            n_q = cfg["height"] * cfg["width"]
            n_k = num_tokens(cfg["pooling_sizes"]) if module_cls is ESA else n_q
            size = torch.finfo(dtype).bits // 8
            args = dict(batch=cfg["batch"], heads=cfg["heads"], n_queries=n_q, n_keys=n_k, bytes_per_element=size)
            case = f"{module_cls.__name__} with " + ", ".join(f"{k}={v}" for k, v in args.items())
            with _student_code("your attention_bytes", case):
                got = ask("your attention_bytes", fn, **args)
            got = _as_number(got, "your attention_bytes", case)
            expected = attention_matrix_bytes(module, x)
            if got != expected:
                hint = ""
                if got == expected // size:
                    hint = "\n  Hint: that is the number of elements; multiply by bytes_per_element."
                elif got == expected // cfg["batch"] or got == expected // cfg["heads"]:
                    hint = "\n  Hint: every image of the batch and every head has its own matrix."
                raise CheckFailed(
                    f"your attention_bytes gives {got!r} but the attention matrix (B, heads, N, n_kv) of {case} "
                    f"measures {expected:,} bytes{hint}"
                )
            n += 1
    return _passed("check_attention_bytes", n)


# --------------------------------------------------------------------------- exercise 4: folding


@_keeps_rng
def check_pool_then_project(fn: Callable[..., torch.Tensor], seed: int = 0) -> Passed:
    """Check ``fn(x, w, pooling_sizes)`` = PPM of the 1x1 projection ``w`` (out, C) of x, computed cheaply.

    The result (B, out, n_kv) must equal ``PPM(conv1x1(x, w))`` and the
    function may spend no more FLOPs than projecting the n_kv pooled tokens.
    """
    __tracebackhide__ = True
    gen = _gen(seed)
    cases = (((2, 6, 9, 9), 4, (1, 3, 5)), ((1, 5, 7, 10), 8, (1, 2, 3, 6)), ((2, 3, 4, 4), 3, (2,)))
    for shape, out, sizes in cases:
        x, w = _random(shape, gen), _random((out, shape[1]), gen)
        case = f"x of shape {shape}, w of shape {(out, shape[1])}, pooling_sizes={sizes}"
        with _student_code("your pool_then_project", case), FlopCounterMode(display=False) as counter:
            got = _as_tensor(ask("your pool_then_project", fn, x.clone(), w.clone(), sizes),
                             "your pool_then_project", case)
        expected = PPM(sizes)(F.conv2d(x, w[:, :, None, None]))
        if got.shape != expected.shape:
            raise CheckFailed(
                f"your pool_then_project returned shape {tuple(got.shape)}, expected {tuple(expected.shape)} "
                f"= (B, out, n_kv)\n  on {case}"
            )
        _compare(got, expected, "your pool_then_project", case, "project the pooled tokens: w @ PPM(x).")
        budget = 2 * shape[0] * out * shape[1] * num_tokens(sizes)
        spent = counter.get_total_flops()
        if spent > budget:
            raise CheckFailed(
                f"your pool_then_project is right but spends {spent:,} FLOPs on matrix products\n  on {case};\n"
                f"  projecting only the {num_tokens(sizes)} pooled tokens takes {budget:,}.\n"
                "  Hint: pool x first, then multiply by w; do not project all H*W pixels."
            )
    return _passed("check_pool_then_project", len(cases), " (values and FLOP budget)")


@_keeps_rng
def check_fold_query(fn: Callable[..., torch.Tensor], seed: int = 0) -> Passed:
    """Check ``fn(w_q, k, heads, scale)`` -> A (B, C, heads*n_kv) against :meth:`esa_tutorial.ESA.folded_weights`.

    ``w_q`` is (heads*dim_head, C), ``k`` the pooled keys (B, heads*dim_head, n_kv);
    column ``h*n_kv + j`` of A is ``scale * W_q,h^T k_h[:, j]``, so that
    ``x_pixel @ A`` gives every head's scores at once.
    """
    __tracebackhide__ = True
    gen = _gen(seed)
    for esa, cfg, shape in _built(ESA, _ESA_CONFIGS, seed):
        x = _random(shape, gen)
        w_q, w_k, _ = esa.to_qkv.weight.detach().flatten(1).chunk(3, dim=0)
        k = w_k @ esa.ppm(x)
        case = f"heads={cfg['heads']}, dim_head={cfg['dim_head']}, w_q {tuple(w_q.shape)}, k {tuple(k.shape)}"
        with _student_code("your fold_query", case):
            got = ask("your fold_query", fn, w_q.clone(), k.clone(), cfg["heads"], esa.scale)
            got = _as_tensor(got, "your fold_query", case)
        with torch.no_grad():
            expected, _ = esa.folded_weights(x)
        if got.shape != expected.shape:
            raise CheckFailed(
                f"your fold_query returned shape {tuple(got.shape)}, expected {tuple(expected.shape)} "
                f"= (B, C, heads*n_kv)\n  on {case}"
            )
        n_kv = k.shape[-1]
        interleaved = expected.reshape(*expected.shape[:2], cfg["heads"], n_kv).transpose(-1, -2).flatten(2)
        hint = "A_h = scale * W_q,h^T @ k_h for each head h, and the heads side by side: columns h*n_kv + j."
        if torch.allclose(got, interleaved, atol=1e-5) and cfg["heads"] > 1:
            hint = "your columns are ordered (n_kv, heads); put the heads side by side: '(h n)', not '(n h)'."
        elif torch.allclose(got, expected / esa.scale, atol=1e-5):
            hint = "you left out the scale; fold it into A."
        _compare(got, expected, "your fold_query", case, hint)
    return _passed("check_fold_query", len(_ESA_CONFIGS))



# --------------------------------------------------------------------------- exercise 5: LDNet

LDNET_SIZES = dict(heads=2, dim_head=8, mlp_dim=32)  # the small LDNet of exercise 5
_LDNET_CASES = (((1, 3, 5), 8, 64), ((1,), 8, 64), ((1, 2, 3, 6), 4, 96))
_MEASURES = ("tokens", "parameters", "flops", "attention_bytes")


def _ldnet_measurements(pooling_sizes: Sequence[int], width: int, image_size: int) -> dict[str, int]:
    """What :func:`check_ldnet_measurements` expects, measured on ``meta`` tensors (no arithmetic).

    For ``LDNet(width, pooling_sizes=..., **LDNET_SIZES)`` on one (1, 3, S, S) image:
    tokens per ESA layer, parameters, FLOPs of a forward pass, and the bytes of
    the attention matrices of all its ESA layers together.
    """
    with torch.device("meta"):
        model = LDNet(width=width, pooling_sizes=tuple(pooling_sizes), **LDNET_SIZES)
        x = torch.empty(1, 3, image_size, image_size)
    inputs: list[tuple[ESA, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: inputs.append((mod, args[0])))
             for m in model.modules() if isinstance(m, ESA)]
    flops = count_flops(model, x)
    for h in hooks:
        h.remove()
    return dict(
        tokens=num_tokens(pooling_sizes),
        parameters=sum(p.numel() for p in model.parameters()),
        flops=flops,
        attention_bytes=sum(attention_matrix_bytes(m, t) for m, t in inputs),
    )


@_keeps_rng
def check_ldnet_measurements(fn: Callable[..., dict], seed: int | None = None) -> Passed:
    """Check ``fn(pooling_sizes, width, image_size)`` -> dict of the four measurements of a small LDNet.

    Keys: ``tokens`` (per ESA layer), ``parameters``, ``flops`` (one forward
    pass on one image, FlopCounterMode's convention) and ``attention_bytes``
    (float32 attention matrices of all ESA layers), for
    ``LDNet(width, pooling_sizes=..., heads=2, dim_head=8, mlp_dim=32)``.
    ``seed`` draws two random cases instead of the fixed ones.
    """
    __tracebackhide__ = True
    hints = {
        "tokens": "an s x s grid gives s*s tokens; add them over the pooling sizes.",
        "parameters": "count every parameter of the model: sum(p.numel() for p in model.parameters()).",
        "flops": "use esa_tutorial.cost.count_flops(model, x) on a (1, 3, image_size, image_size) input.",
        "attention_bytes": "LDNet has several ESA layers on maps of different sizes: record each ESA's input "
        "with a forward hook and add esa_tutorial.cost.attention_matrix_bytes(esa, its_input) over all of them.",
    }
    cases = _LDNET_CASES
    if seed is not None or salt():
        gen = _gen(seed or 0)
        options = list(itertools.product(((1, 3, 5), (1, 2, 3, 6), (2, 4), (1,)), (4, 8), (64, 96)))
        cases = tuple(options[int(i)] for i in torch.randperm(len(options), generator=gen)[:2])
    for sizes, width, image_size in cases:
        case = f"pooling_sizes={sizes}, width={width}, image_size={image_size}"
        with _student_code("your measure", case):
            got = ask("your measure", fn, sizes, width=width, image_size=image_size)
        if not isinstance(got, dict):
            raise CheckFailed(f"your measure should return a dict with keys {_MEASURES}, got {type(got).__name__}")
        missing = [k for k in _MEASURES if k not in got]
        if missing:
            raise CheckFailed(f"your measure's dict lacks {missing}; it needs {_MEASURES}\n  on {case}")
        expected = _ldnet_measurements(sizes, width, image_size)
        for key in _MEASURES:
            value = _as_number(got[key], f"your measure's {key!r}", case)
            if value != expected[key]:
                raise CheckFailed(
                    f"your measure gives {key}={value!r}, measured {expected[key]:,}\n  on {case}\n"
                    f"  Hint: {hints[key]}"
                )
    return _passed("check_ldnet_measurements", len(cases))


# --------------------------------------------------------------------------- exercise 6: LCA's broadcast

_LCA_CONFIGS = (
    dict(dim=8, heads=2, dim_head=4, shape=(2, 8, 5, 7)),
    dict(dim=6, heads=3, dim_head=5, shape=(1, 6, 4, 4)),
    dict(dim=16, heads=4, dim_head=8, shape=(2, 16, 3, 9)),
)
_QKV = ("q", "k", "v")


def _lca_gradients(lca: LCA, x: torch.Tensor, mask_logits: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
    """Largest |gradient| of the loss <LCA(x), g> in the q, k and v rows of ``to_qkv.weight``."""
    lca.zero_grad()
    (lca(x, mask_logits) * g).sum().backward()
    grads = lca.to_qkv.weight.grad.flatten(1).chunk(3, dim=0)
    return {name: float(part.abs().max()) for name, part in zip(_QKV, grads)}


@_keeps_rng
def check_lca_zero_gradients(prediction: object, seed: int = 0) -> Passed:
    """Check a prediction: which of the query, key and value weights of LCA get exactly zero gradient.

    ``prediction`` is a set of names out of ``{"q", "k", "v"}``; it is compared
    with the gradients measured on random inputs, weights and masks.
    """
    __tracebackhide__ = True
    with _student_code("your prediction", "the prediction cell"):
        got = ask("your prediction", lambda: prediction)
    try:
        names = {str(n) for n in got}
    except TypeError:
        raise CheckFailed(f"write your prediction as a set of names, e.g. {{'v'}}, got {got!r}") from None
    if not names <= set(_QKV):
        raise CheckFailed(f"the names are 'q', 'k' and 'v' (the three blocks of to_qkv.weight), got {sorted(names)}")
    gen = _gen(seed)
    measured: dict[str, float] = {}
    for lca, cfg, shape in _built(LCA, _LCA_CONFIGS, seed):
        x, mask = _random(shape, gen), _random((shape[0], 1, *shape[2:]), gen)
        for name, value in _lca_gradients(lca, x, mask, _random((shape[0], shape[2] * shape[3], shape[1]), gen)).items():
            measured[name] = max(measured.get(name, 0.0), value)
    zero = {n for n, v in measured.items() if v == 0.0}
    if names != zero:
        table = ", ".join(f"{n}: {measured[n]:.3g}" for n in _QKV)
        raise CheckFailed(
            f"you predicted zero gradients for {sorted(names)}, but the measured largest |gradient| is {table}\n"
            "  Hint: the softmax of a row with one entry is 1 whatever the score; what does the score depend on?"
        )
    return _passed("check_lca_zero_gradients", len(_LCA_CONFIGS), f" (zero: {sorted(zero)})")


@_keeps_rng
def check_lca_shortcut(fn: Callable[..., torch.Tensor], seed: int = 0) -> Passed:
    """Check ``fn(x, mask_logits, w_v, w_out, b_out)`` -> (B, H*W, C) against :class:`~esa_tutorial.LCA`.

    ``w_v`` (heads*dim_head, C) are LCA's value weights, ``w_out`` (C, heads*dim_head)
    and ``b_out`` (C,) its output projection. The function must compute LCA's
    output without queries, keys or a softmax.
    """
    __tracebackhide__ = True
    gen = _gen(seed)
    for lca, cfg, shape in _built(LCA, _LCA_CONFIGS, seed):
        x, mask = _random(shape, gen), _random((shape[0], 1, *shape[2:]), gen)
        w_v = lca.to_qkv.weight.detach().flatten(1).chunk(3, dim=0)[2]
        linear = lca.to_out[0]
        case = f"LCA(dim={cfg['dim']}, heads={cfg['heads']}, dim_head={cfg['dim_head']}) on x of shape {shape}"
        with _student_code("your lca_shortcut", case), _OpRecorder() as rec:
            got = ask("your lca_shortcut", fn, x.clone(), mask.clone(), w_v.clone(),
                      linear.weight.detach().clone(), linear.bias.detach().clone())
        got = _as_tensor(got, "your lca_shortcut", case)
        with torch.no_grad():
            expected = lca(x, mask)
        if got.shape != expected.shape:
            raise CheckFailed(
                f"your lca_shortcut returned shape {tuple(got.shape)}, expected {tuple(expected.shape)} "
                f"= (B, H*W, C)\n  on {case}"
            )
        _compare(got, expected, "your lca_shortcut", case,
                 "pool x with sigmoid(mask_logits) as weights (sum(x*m) / (sum(m) + 5e-4)), project the pooled "
                 "token with w_v, then with w_out and b_out, and give that row to every pixel.")
        if rec.ops & {"softmax", "_softmax"}:
            raise CheckFailed("your lca_shortcut is right but calls softmax; the point is that it is not needed.")
    return _passed("check_lca_shortcut", len(_LCA_CONFIGS))
