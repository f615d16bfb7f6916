"""The book's trained models: fixed-seed CPU runs, their histories and small checkpoints.

Four suites, each a grid of variants x seeds trained under one protocol:

``context``
    :class:`~esa_tutorial.book.context_task.ContextNet` on the key-matching task of
    :mod:`esa_tutorial.book.context_task`: no attention, a single global token
    (ESA with ``pooling_sizes=(1,)``), ESA, full MHSA.
``fine-key``
    The same network and variants on :mod:`esa_tutorial.book.fine_key_task` (48x48):
    a key smaller than a pyramid cell among look-alike decoys.
``far-pixel``
    :class:`~esa_tutorial.book.far_pixel_task.FarPixelNet` on
    :mod:`esa_tutorial.book.far_pixel_task` (24x24): every pixel compares its bit with
    that of one marker pixel anywhere. ESA and full MHSA on linear features, and two
    controls: ESA when the marker is a 6x6 square (task ``far-patch``), and ESA behind
    a convolutional encoder.
``ablation``
    :class:`~esa_tutorial.nn.ldnet.LDNet` (width 16) on 64x64 synthetic polyps:
    no attention, ESA, full MHSA, ESA + LCA (chapter 7).

The protocol makes the variants comparable within a seed: the shared parts
start from identical weights (asserted before training), every variant sees
the same batches in the same order (one ``torch.Generator`` per seed), the
same number of steps and the same optimiser (AdamW with a poly schedule). Cost
is measured in the same run: parameters, bytes autograd keeps for one
training batch, and the median wall time of a step.

``python -m esa_tutorial.experiments context``, ``... fine-key``, ``... far-pixel`` and ``... ablation``
reproduce everything the book loads from :data:`PRETRAINED`. The stored runs took about
60, 107, 15 and 38 minutes of training steps (context, fine-key, far-pixel, ablation) on one
thread each, on a busy shared 2-core machine (each run's time is in its history; suites can run in parallel
processes with ``--seeds``/``--variants`` and the same ``--out``, results are
merged by run name). The files (about 3 MB) are committed as package data
rather than attached as release files because the book runs on Colab from a
``pip install`` of the package: the checkpoints arrive with it, with no
download step that could fail or drift from the code. :func:`load_history` and
:func:`load_model` check each file's SHA-256 against ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ..book.context_task import ContextDiscs, ContextNet
from ..data import SyntheticPolyps
from ..book.fine_key_task import FineKeyDiscs
from ..book.far_pixel_task import FarPixelBits, FarPixelNet
from ..files import save_tensors, write_json
from ..nn.ldnet import LDNet
from ..metrics import segmentation_scores
from ..train import (
    FitLog, TrainingDiverged, bce_dice_loss, deep_supervision_loss, fit, poly_schedule, saved_activation_bytes,
)

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"
MANIFEST = "manifest.json"
Task = Literal["context", "fine-key", "far-pixel", "far-patch", "polyps"]
FAR_PATCH = 6  # side of the marked square in the far-patch control: about one 5x5 cell of a 24x24 map

# The checkpoints the book loads (seed 0): every context and far-pixel model (the latter
# 16 kB each), and LDNet with ESA (2.4 MB; the other ablation models would add 7 MB for
# figures no chapter draws).
CHECKPOINTED = {"context": None, "fine-key": (), "far-pixel": None, "ablation": ("ESA",)}

CONTEXT_VARIANTS: dict[str, dict[str, Any]] = {
    "no attention": dict(attention="none"),
    "ESA": dict(attention="esa"),
    "full MHSA": dict(attention="mhsa"),
    # ESA with a pyramid of one cell: one key, so its softmax weight is 1 and the block
    # broadcasts a learned global average to every pixel (what LCA does; PSP/SE-like).
    "global token": dict(attention="esa", pooling_sizes=(1,)),
}
FAR_PIXEL_VARIANTS: dict[str, dict[str, Any]] = {
    # Linear features into the attention: ESA sees the marker's bit only inside cell averages.
    "ESA": dict(attention="esa"),
    "full MHSA": dict(attention="mhsa"),
    # Control of size: the marker is a FAR_PATCH x FAR_PATCH square, about one cell (task "far-patch").
    "ESA 6x6 marker": dict(attention="esa"),
    # Control of features: a non-linear encoder can isolate the marker's bit before the pooling.
    "conv + ESA": dict(attention="esa", encoder="conv"),
}
FAR_PATCH_VARIANTS = ("ESA 6x6 marker",)
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "no attention": dict(attention="none", use_lca=False),
    "ESA": dict(attention="esa", use_lca=False),
    "full MHSA": dict(attention="mhsa", use_lca=False),
    "ESA + LCA": dict(attention="esa", use_lca=True),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run. Everything that changes the result is here and in the saved history."""

    task: Task
    variant: str
    model: dict[str, Any]
    seed: int = 0
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    size: int = 64
    n_train: int = 512
    n_val: int = 128
    eval_every: int = 50

    @property
    def name(self) -> str:
        """File-friendly name, e.g. ``context-esa-seed0``."""
        slug = self.variant.lower().replace(" + ", "-").replace(" ", "-")
        return f"{self.task}-{slug}-seed{self.seed}"


def context_spec(variant: str, seed: int = 0, **overrides: Any) -> RunSpec:
    """The context suite's protocol: 600 AdamW steps of 16 images, 64x64."""
    return RunSpec("context", variant, dict(CONTEXT_VARIANTS[variant]), seed, **overrides)


def fine_key_spec(variant: str, seed: int = 0, **overrides: Any) -> RunSpec:
    """The fine-key suite (:mod:`esa_tutorial.book.fine_key_task`): the context protocol and variants at 48x48.

    48x48 rather than 64x64 keeps full attention affordable on a CPU (576 tokens instead of 1024).
    """
    return RunSpec("fine-key", variant, dict(CONTEXT_VARIANTS[variant]), seed, **{"size": 48, **overrides})


def far_pixel_spec(variant: str, seed: int = 0, **overrides: Any) -> RunSpec:
    """The far-pixel suite (:mod:`esa_tutorial.book.far_pixel_task`): 24x24 maps, AdamW, the context protocol's batches."""
    base: dict[str, Any] = dict(size=24, steps=800, n_train=1024, n_val=256, eval_every=50)
    task = "far-patch" if variant in FAR_PATCH_VARIANTS else "far-pixel"
    return RunSpec(task, variant, dict(FAR_PIXEL_VARIANTS[variant]), seed, **{**base, **overrides})


def ablation_spec(variant: str, seed: int = 0, **overrides: Any) -> RunSpec:
    """The ablation suite's protocol: LDNet width 16 on 64x64 polyps, 240 AdamW steps of 16."""
    base: dict[str, Any] = dict(steps=240, lr=2e-3, n_train=640, n_val=96, eval_every=24)
    return RunSpec("polyps", variant, dict(ABLATION_VARIANTS[variant]), seed, **{**base, **overrides})


def build_model(spec: RunSpec) -> nn.Module:
    """The spec's model with its seed's initial weights."""
    if spec.task in ("far-pixel", "far-patch"):
        return FarPixelNet(seed=spec.seed, **spec.model)
    if spec.task != "polyps":
        return ContextNet(seed=spec.seed, **spec.model)
    return LDNet(seed=spec.seed, **spec.model)


def datasets(spec: RunSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training and validation tensors (images (N, 3, S, S), masks (N, 1, S, S)), the same for every seed.

    The data are fixed (seed 0 for training, 1 for validation): seeds change the
    initial weights and the batch order, not the task.
    """
    kind = {"context": ContextDiscs, "fine-key": FineKeyDiscs, "far-pixel": FarPixelBits,
            "far-patch": functools.partial(FarPixelBits, patch=FAR_PATCH), "polyps": SyntheticPolyps}[spec.task]
    out = []
    for n, seed in ((spec.n_train, 0), (spec.n_val, 1)):
        ds = kind(n, spec.size, seed)
        images, masks = zip(*(ds[i] for i in range(n)))
        out += [torch.stack(images), torch.stack(masks)]
    return tuple(out)  # type: ignore[return-value]


def _loss(spec: RunSpec, outputs: Any, masks: torch.Tensor) -> torch.Tensor:
    return bce_dice_loss(outputs, masks) if spec.task != "polyps" else deep_supervision_loss(outputs, masks)


@torch.no_grad()
def evaluate(spec: RunSpec, model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Validation loss, Dice and mean IoU of the finest output (per image, averaged)."""
    model.eval()
    losses, probs = [], []
    for i in range(0, len(images), 32):
        out = model(images[i : i + 32])
        losses.append(float(_loss(spec, out, masks[i : i + 32])) * len(out if spec.task != "polyps" else out[0]))
        probs.append(torch.sigmoid(out if spec.task != "polyps" else out[0]))
    model.train()
    scores = segmentation_scores(torch.cat(probs), masks)
    return {"loss": sum(losses) / len(images), "dice": scores["dice"], "miou": scores["miou"]}


@dataclass
class RunResult:
    """What a run leaves: its spec, history, cost and final weights."""

    spec: RunSpec
    history: dict[str, list[float]]
    cost: dict[str, float]
    state_dict: dict[str, torch.Tensor] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"spec": dataclasses.asdict(self.spec), "history": self.history, "cost": self.cost}


def train_run(
    spec: RunSpec,
    stop_after: int | None = None,
    data: tuple[torch.Tensor, ...] | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train one run through :func:`~esa_tutorial.train.fit`; ``stop_after`` ends early with the full run's schedule.

    AdamW with the poly schedule stepped per step; batches of
    ``spec.batch_size`` drawn with replacement by
    ``torch.Generator().manual_seed(spec.seed)`` alone; the model's initial
    weights from ``spec.seed`` per part; validation every ``spec.eval_every``
    steps. Global torch state is not touched (the caller sets the thread count).

    Raises :class:`~esa_tutorial.train.TrainingDiverged`, naming the run, the
    step and the learning rate, as soon as the loss or a weight is not finite.
    """
    x, y, vx, vy = data if data is not None else datasets(spec)
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    order = torch.Generator().manual_seed(spec.seed)
    steps = spec.steps if stop_after is None else min(stop_after, spec.steps)
    history: dict[str, list[float]] = {"loss": [], "eval_step": [], "val_loss": [], "val_dice": [], "val_miou": []}
    cost = model_cost(model, x[: spec.batch_size])

    def batches():
        for _ in range(steps):
            idx = torch.randint(0, len(x), (spec.batch_size,), generator=order)
            yield x[idx], y[idx]

    def report(what: str, step: int, lr: float) -> TrainingDiverged:
        return TrainingDiverged(
            f"run {spec.name} diverged at step {step + 1} of {spec.steps}: {what}. The usual cause is a learning "
            f"rate too high for this model: it was {lr:.3g} at this step (base lr {spec.lr:g}); try a smaller lr.")

    def validate(step: int, fitted: FitLog) -> None:
        if (step + 1) % spec.eval_every == 0 or step + 1 == steps:
            scores = evaluate(spec, model, vx, vy)
            history["eval_step"].append(step + 1)
            for k in ("loss", "dice", "miou"):
                history[f"val_{k}"].append(scores[k])
            if log is not None:
                log(f"{spec.name} step {step + 1}: loss {fitted.loss[-1]:.3f}, val dice {scores['dice']:.3f}")

    fitted = fit(model, batches(), functools.partial(_loss, spec), opt, scheduler=poly_schedule(opt, spec.steps),
                 diverged=report, on_step=validate)
    history["loss"] = fitted.loss
    cost["ms_per_step"] = 1000 * statistics.median(fitted.seconds)
    cost["train_seconds"] = sum(fitted.seconds)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return RunResult(spec, history, cost, state)


def model_cost(model: nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """The run's exact costs: parameters, and MiB autograd keeps for one training ``batch`` (B, 3, S, S).

    Both depend only on the code and the spec, not on the machine, so a stored run's
    values can be recomputed and compared (:func:`remeasure_costs`).
    """
    return {
        "params": float(sum(p.numel() for p in model.parameters())),
        # clone: a slice of the data set is a view, whose whole storage would be counted.
        "saved_mb": saved_activation_bytes(model, batch.clone()) / 2**20,
    }


def first_batch(spec: RunSpec) -> torch.Tensor:
    """The first ``batch_size`` training images of ``spec`` (sample i depends on (seed, i) only)."""
    return datasets(dataclasses.replace(spec, n_train=spec.batch_size, n_val=1))[0]


def remeasure_costs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored runs with ``params`` and ``saved_mb`` measured again by the current code.

    The training histories and times stay as stored; use this when the code changed what
    autograd keeps but not the computation (the reproduction test checks the losses).
    """
    out = []
    for run in runs:
        spec = spec_from_json(run["spec"])
        cost = {**run["cost"], **model_cost(build_model(spec), first_batch(spec))}
        out.append({**run, "cost": cost})
    return out


def check_equal_start(specs: Sequence[RunSpec]) -> None:
    """Raise ``AssertionError`` unless the shared parts of the specs' models start identical.

    For LDNet the shared parts are :data:`~esa_tutorial.nn.ldnet.SHARED_PARTS`; for
    ContextNet the stem, head and the block's feed-forward part; for FarPixelNet its
    ``shared_state_dict`` (the attention and the MLP).
    """
    def shared(model: nn.Module) -> dict[str, torch.Tensor]:
        if isinstance(model, (LDNet, FarPixelNet)):
            return model.shared_state_dict()
        return {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("stem", "head")
                or k.startswith("block.ff.")}

    first = shared(build_model(specs[0]))
    for spec in specs[1:]:
        other = shared(build_model(spec))
        if other.keys() != first.keys() or not all(torch.equal(first[k], other[k]) for k in first):
            raise AssertionError(f"{spec.name} does not start from the shared weights of {specs[0].name}")


def run_suite(
    specs: Sequence[RunSpec],
    out: Path | None = None,
    suite: str = "suite",
    checkpoint_seeds: Sequence[int] = (0,),
    checkpoint_variants: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> list[RunResult]:
    """Train every spec (grouped by seed, equal starts asserted) and write ``histories/<suite>.json``.

    With ``out``, the final weights of runs whose seed is in
    ``checkpoint_seeds`` (and variant in ``checkpoint_variants``, default all)
    go to ``out/<run name>.pt``.
    """
    results = []
    for seed in sorted({s.seed for s in specs}):
        group = [s for s in specs if s.seed == seed]
        check_equal_start(group)
        data: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}  # a suite may hold a control on other data
        for spec in group:
            key = (spec.task, spec.size, spec.n_train, spec.n_val)
            if key not in data:
                data[key] = datasets(spec)
            result = train_run(spec, data=data[key], log=log)
            results.append(result)
            if out is not None:
                write_results(results, out, suite)
                wanted = checkpoint_variants is None or spec.variant in checkpoint_variants
                if spec.seed in checkpoint_seeds and wanted:
                    save_tensors(result.state_dict, out / f"{spec.name}.pt")
    return results


def write_results(results: Sequence[RunResult], out: Path, suite: str) -> Path:
    """Write the runs' specs, histories and costs to ``out/histories/<suite>.json``.

    Runs already in the file are kept unless a new run has the same name, so a
    suite can be completed seed by seed.
    """
    path = out / "histories" / f"{suite}.json"
    new = [r.to_json() for r in results]
    names = {spec_from_json(r["spec"]).name for r in new}
    old = json.loads(path.read_text()) if path.is_file() else []
    kept = [r for r in old if spec_from_json(r["spec"]).name not in names]
    runs = sorted(kept + new, key=lambda r: (r["spec"]["seed"], r["spec"]["variant"]))
    write_json(runs, path)
    return path


# --------------------------------------------------------------------------- integrity


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_manifest(folder: Path = PRETRAINED) -> dict[str, str]:
    """Record the SHA-256 of every ``.pt`` and ``.json`` file under ``folder`` in ``manifest.json``."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".pt", ".json") and p.name != MANIFEST)
    manifest = {p.relative_to(folder).as_posix(): sha256(p) for p in files}
    write_json(manifest, folder / MANIFEST)
    return manifest


def verified_path(name: str, folder: Path = PRETRAINED) -> Path:
    """The path of ``name`` under ``folder`` after checking its SHA-256 against the manifest.

    Raises ``FileNotFoundError`` for a file the manifest does not list or
    that is missing, and ``ValueError`` naming the file on a checksum mismatch.
    (The one place to swap for :mod:`esa_tutorial.checkpoints` once merged.)
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: run python -m esa_tutorial.experiments manifest --out {folder}")
    manifest = json.loads(manifest_path.read_text())
    if name not in manifest:
        raise FileNotFoundError(f"{name!r} is not in {manifest_path}; known: {sorted(manifest)[:6]}...")
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed in the manifest but missing")
    digest = sha256(path)
    if digest != manifest[name]:
        raise ValueError(
            f"checksum mismatch for {path}: SHA-256 {digest[:16]}..., manifest says {manifest[name][:16]}...; "
            "the file is corrupted or was changed without re-running the experiments"
        )
    return path


def load_history(suite: str, folder: Path = PRETRAINED) -> list[dict[str, Any]]:
    """The stored runs of a suite (``"context"``, ``"fine-key"``, ``"far-pixel"``, ``"ablation"``): a list of {spec, history, cost}."""
    return json.loads(verified_path(f"histories/{suite}.json", folder).read_text())


def spec_from_json(spec: dict[str, Any]) -> RunSpec:
    """Rebuild a :class:`RunSpec` from its stored dictionary (JSON lists back to tuples)."""
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["model"].items()}
    return RunSpec(**{**spec, "model": model})


def load_model(spec: RunSpec, folder: Path = PRETRAINED) -> nn.Module:
    """The trained model of ``spec`` from its checksummed checkpoint, in eval mode."""
    path = verified_path(f"{spec.name}.pt", folder)
    model = build_model(spec)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def summarise(runs: Sequence[dict[str, Any]], key: str = "val_dice") -> dict[str, dict[str, float]]:
    """Per variant: mean and standard deviation over seeds of the final ``key``, and the seeds.

    Returns ``{variant: {"mean", "std", "n", "min", "max"}}`` (std over seeds, n - 1).
    """
    by_variant: dict[str, list[float]] = {}
    for run in runs:
        by_variant.setdefault(run["spec"]["variant"], []).append(run["history"][key][-1])
    return {
        v: {
            "mean": statistics.fmean(xs),
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": float(len(xs)),
            "min": min(xs),
            "max": max(xs),
        }
        for v, xs in by_variant.items()
    }


def curves(runs: Sequence[dict[str, Any]], variant: str, key: str = "val_dice") -> tuple[np.ndarray, np.ndarray]:
    """Evaluation steps (n_evals,) and the ``key`` curves of every seed of ``variant`` (n_seeds, n_evals)."""
    chosen = [r for r in runs if r["spec"]["variant"] == variant]
    if not chosen:
        raise ValueError(f"no runs of variant {variant!r}")
    return np.array(chosen[0]["history"]["eval_step"]), np.array([r["history"][key] for r in chosen])


def results_table(runs: Sequence[dict[str, Any]], variants: Sequence[str], key: str = "val_dice") -> str:
    """One line per variant: final ``key`` mean +- std over seeds, the seeds' values, parameters and cost."""
    stats = summarise(runs, key)
    lines = [f"{'variant':<14}{'mean':>7}{'std':>7}   per seed{'':<14}{'params':>9}{'saved MiB':>10}{'ms/step':>9}"]
    for v in variants:
        chosen = [r for r in runs if r["spec"]["variant"] == v]
        finals = " ".join(f"{r['history'][key][-1]:.3f}" for r in chosen)
        cost = chosen[0]["cost"]
        ms = np.median([r["cost"]["ms_per_step"] for r in chosen])
        lines.append(
            f"{v:<14}{stats[v]['mean']:>7.3f}{stats[v]['std']:>7.3f}   {finals:<22}"
            f"{cost['params'] / 1e3:>8.1f}k{cost['saved_mb']:>10.1f}{ms:>9.0f}"
        )
    return "\n".join(lines)
