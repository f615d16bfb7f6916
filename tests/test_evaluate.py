"""Scoring as LDNet's test.py: hand-counted pixels, the TP := 1 quirk, folder layouts and the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from esa_tutorial import LDNet
from esa_tutorial.checkpoints import save_checkpoint
from esa_tutorial.evaluate import find_datasets, find_pairs, known_name, ldnet_image_scores, score_test_set
from esa_tutorial.evaluate.__main__ import main
from esa_tutorial.nn.ldnet_weights import ldnet_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")
N = 8  # side of the hand-counted maps


def block(rows: slice, cols: slice, value: float = 1.0, n: int = N) -> torch.Tensor:
    m = torch.zeros(n, n)
    m[rows, cols] = value
    return m


# Four images of 8x8 = 64 pixels: (prediction, mask) and their counts by hand.
# A: mask rows 0-3 x cols 0-3 (16 px), prediction rows 2-5 x cols 0-3: TP 8, FP 8, FN 8, TN 40.
# B: empty mask, empty prediction.
# C: empty mask, prediction of 4 px: FP 4.
# D: mask of 6 px, prediction of 2 px elsewhere: FP 2, FN 6.
CASES = [
    (block(slice(2, 6), slice(0, 4), 0.5), block(slice(0, 4), slice(0, 4))),  # 0.5 counts as polyp
    (torch.full((N, N), 0.4999), torch.zeros(N, N)),
    (block(slice(7, 8), slice(0, 4), 0.9), block(slice(0, 1), slice(0, 1), 0.49)),  # 0.49 in a mask: background
    (block(slice(7, 8), slice(6, 8)), block(slice(0, 2), slice(0, 3))),
]
DEFAULT = {  # our rule: 0/0 is 1 if the prediction is exact, else 0
    "dice": [16 / 32, 1, 0, 0], "iou_polyp": [8 / 24, 1, 0, 0], "recall": [8 / 16, 1, 0, 0],
    "precision": [8 / 16, 1, 0, 0], "specificity": [40 / 48, 1, 60 / 64, 56 / 58],
    "accuracy": [48 / 64, 1, 60 / 64, 56 / 64], "iou_background": [40 / 56, 1, 60 / 64, 56 / 64],
}
QUIRK = {  # LDNet's: TP := 1 on B, C and D
    "dice": [16 / 32, 2 / 2, 2 / 6, 2 / 10], "iou_polyp": [8 / 24, 1, 1 / 5, 1 / 9], "recall": [8 / 16, 1, 1, 1 / 7],
    "precision": [8 / 16, 1, 1 / 5, 1 / 3], "accuracy": [48 / 64, 65 / 65, 61 / 65, 57 / 65],
    "iou_background": [40 / 56, 1, 60 / 64, 56 / 64],
}


def test_ldnet_image_scores_hand_counts() -> None:
    probs = torch.stack([p for p, _ in CASES])[:, None]
    masks = torch.stack([m for _, m in CASES])[:, None]
    for quirk, expected in ((False, DEFAULT), (True, QUIRK)):
        scores = ldnet_image_scores(probs, masks, tp_quirk=quirk)
        for name, values in expected.items():
            torch.testing.assert_close(scores[name], torch.tensor(values, dtype=torch.float64), msg=name)
        torch.testing.assert_close(scores["miou"], (scores["iou_polyp"] + scores["iou_background"]) / 2)
    with pytest.raises(ValueError, match="finite probabilities"):
        ldnet_image_scores(torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 2, 2))


# ----------------------------------------------------------------------------------- folders


def save_rgb(path: Path, prediction: torch.Tensor) -> None:
    """An image whose red channel is the prediction (255 where polyp); the test's predictor reads it back."""
    rgb = np.zeros((*prediction.shape, 3), dtype=np.uint8)
    rgb[..., 0] = (prediction >= 0.5).numpy() * 255
    rgb[..., 1] = 60
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def save_mask(path: Path, mask: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((mask >= 0.5).numpy() * 255).astype(np.uint8)).save(path)


def red_channel(images: torch.Tensor) -> torch.Tensor:
    """The test's model: the probability of polyp is the image's red channel."""
    return images[:, :1]


@pytest.fixture
def test_sets(tmp_path: Path) -> Path:
    """TestDataset/ with one set per layout; each holds CASES A..D (or a subset) as files."""
    root = tmp_path / "TestDataset"
    for i, (pred, mask) in enumerate(CASES, start=1):  # images/ + masks/ (Kvasir-SEG, LDNet's test folders)
        save_rgb(root / "Kvasir" / "test" / "images" / f"cju{i}.png", pred)  # PNG: lossless, unlike Kvasir's JPEG
        save_mask(root / "Kvasir" / "test" / "masks" / f"cju{i}.png", mask)
    for i, (pred, mask) in enumerate(CASES[:2], start=1):  # Original/ + Ground Truth/ (CVC-ClinicDB)
        save_rgb(root / "CVC-ClinicDB" / "Original" / f"{i}.tif", pred)
        save_mask(root / "CVC-ClinicDB" / "Ground Truth" / f"{i}.tif", mask)
    for i, (pred, mask) in enumerate(CASES[2:], start=1):  # <n>.bmp + p<n>.bmp (CVC-ColonDB)
        save_rgb(root / "CVC-ColonDB" / f"{i}.bmp", pred)
        save_mask(root / "CVC-ColonDB" / f"p{i}.bmp", mask)
        save_mask(root / "CVC-ColonDB" / f"c{i}.bmp", torch.ones(N, N))  # contours: not a mask to score
    for i, (pred, mask) in enumerate(CASES[::3], start=1):  # ETIS-LaribPolypDB/ + Ground Truth/p<n>
        save_rgb(root / "ETIS" / "ETIS-LaribPolypDB" / f"{i}.tif", pred)
        save_mask(root / "ETIS" / "Ground Truth" / f"p{i}.tif", mask)
    return root


def test_find_datasets_recognises_the_four_layouts(test_sets: Path) -> None:
    found = {t.name: t for t in find_datasets(test_sets)}
    assert sorted(found) == ["CVC-ClinicDB", "CVC-ColonDB", "ETIS", "Kvasir/test"]
    assert found["Kvasir/test"].layout == "images/ + masks/" and len(found["Kvasir/test"].pairs) == 4
    assert found["CVC-ClinicDB"].layout == "Original/ + Ground Truth/"
    assert [(i.name, m.name) for i, m in found["CVC-ColonDB"].pairs] == [("1.bmp", "p1.bmp"), ("2.bmp", "p2.bmp")]
    assert [(i.name, m.name) for i, m in found["ETIS"].pairs] == [("1.tif", "p1.tif"), ("2.tif", "p2.tif")]
    assert [known_name(found[n].root) for n in sorted(found)] == [
        "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir-SEG"]
    # A test set given directly is named after its folder.
    assert [t.name for t in find_datasets(test_sets / "CVC-ClinicDB")] == ["CVC-ClinicDB"]


def test_scores_on_generated_folders_equal_hand_counts(test_sets: Path) -> None:
    found = {t.name: t for t in find_datasets(test_sets)}
    subsets = {"Kvasir/test": [0, 1, 2, 3], "CVC-ClinicDB": [0, 1], "CVC-ColonDB": [2, 3], "ETIS": [0, 3]}
    for quirk, expected in ((False, DEFAULT), (True, QUIRK)):
        for name, idx in subsets.items():
            scores = score_test_set(red_channel, found[name], size=N, tp_quirk=quirk, batch_size=3)
            assert scores.n == len(idx)
            for metric, values in expected.items():
                want = sum(values[i] for i in idx) / len(idx)
                assert scores.mean[metric] == pytest.approx(want, abs=1e-12), (name, metric, quirk)


def test_layout_errors_name_the_files(tmp_path: Path, test_sets: Path) -> None:
    (test_sets / "CVC-ClinicDB" / "Ground Truth" / "2.tif").unlink()
    with pytest.raises(ValueError, match=r"1 images in .*Original without a mask .*: 2.tif"):
        find_pairs(test_sets / "CVC-ClinicDB")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no test set found in .*empty: expected images/ \+ masks/"):
        find_datasets(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="test folder not found"):
        find_datasets(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------- the command


def all_polyp(model: LDNet) -> LDNet:
    """Zero the finest unify conv: the finest logits are exactly 0, so every pixel's probability is 0.5 (polyp)."""
    with torch.no_grad():
        model.unify[3].weight.zero_()
        model.unify[3].bias.zero_()
    return model.eval()


@pytest.fixture
def kvasir(tmp_path: Path) -> Path:
    """A 32x32 Kvasir-SEG layout: one image with a 16-pixel polyp, one without."""
    root = tmp_path / "Kvasir-SEG"
    for name, mask in (("a", block(slice(0, 4), slice(0, 4), n=32)), ("b", torch.zeros(32, 32))):
        save_rgb(root / "images" / f"{name}.jpg", torch.zeros(32, 32))
        save_mask(root / "masks" / f"{name}.png", mask)
    return root


# Every pixel predicted polyp, 1024 pixels: a has TP 16, FP 1008; b has FP 1024 (TP := 1 under the quirk).
ALL_POLYP_DICE = (2 * 16 / (2 * 16 + 1008) + 0) / 2
ALL_POLYP_DICE_QUIRK = (2 * 16 / (2 * 16 + 1008) + 2 / (2 + 1024)) / 2


def test_command_scores_a_package_checkpoint(kvasir: Path, tmp_path: Path, capsys) -> None:
    kwargs = dict(width=8, heads=1, dim_head=8, mlp_dim=16, seed=0)
    model = all_polyp(LDNet(**kwargs))
    ckpt = save_checkpoint(tmp_path / "best.pt", model.state_dict(), config={}, extra={"model_kwargs": kwargs})
    out = tmp_path / "scores.json"
    results = main([str(ckpt), str(kvasir), "--size", "32", "--json", str(out)])
    assert results[0].mean["dice"] == pytest.approx(ALL_POLYP_DICE, abs=1e-12)
    assert results[0].mean["iou_polyp"] == pytest.approx(16 / 1024 / 2, abs=1e-12)
    printed = capsys.readouterr().out
    assert "Kvasir-SEG: 2 images in" in printed and f"dice            F1           {ALL_POLYP_DICE:8.4f}" in printed
    saved = json.loads(out.read_text())
    assert saved["test_sets"][0]["images"] == 2 and saved["tp_quirk"] is False
    assert saved["test_sets"][0]["mean"]["dice"] == pytest.approx(ALL_POLYP_DICE, abs=1e-12)
    quirk = main([str(ckpt), str(kvasir), "--size", "32", "--ldnet-tp-quirk"])
    assert quirk[0].mean["dice"] == pytest.approx(ALL_POLYP_DICE_QUIRK, abs=1e-12)


def test_command_scores_an_ldnet_state_dict(kvasir: Path, tmp_path: Path) -> None:
    model = LDNet.full(seed=0)
    with torch.no_grad():
        model.unify[3].weight.zero_()  # LDNet's unify1
        model.unify[3].bias.zero_()
    path = tmp_path / "ck_80.pth"
    torch.save(ldnet_state_dict(model), path)
    results = main([str(path), str(kvasir), "--size", "32"])
    assert results[0].mean["dice"] == pytest.approx(ALL_POLYP_DICE, abs=1e-12)


@pytest.mark.parametrize("args, message", [
    (["{ckpt}", "{tmp}/nowhere"], "test folder not found"),
    (["{tmp}/missing.pt", "{kvasir}"], "no checkpoint file at"),
    (["{tmp}/garbage.pth", "{kvasir}"], "LDNet checkpoint: .*garbage.pth is not a readable torch file"),
])
def test_command_errors(kvasir: Path, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"garbage")
    ckpt = tmp_path / "best.pt"
    argv = [a.format(ckpt=ckpt, tmp=tmp_path, kvasir=kvasir) for a in args]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    printed = capsys.readouterr().err
    assert printed.startswith("python -m esa_tutorial.evaluate: error: ") and re.search(message, printed)
    with pytest.raises(SystemExit):
        main([str(ckpt), str(kvasir), "--size", "100"])
    assert "multiple of 32" in capsys.readouterr().err


@pytest.mark.slow
def test_command_scores_what_the_train_command_wrote(kvasir: Path, tmp_path: Path, capsys) -> None:
    """python -m esa_tutorial.train writes best.pt; evaluate reads it and scores it as the trained model scores."""
    from esa_tutorial.evaluate import find_datasets as sets, probabilities
    from esa_tutorial.train.__main__ import main as train

    ckpt_dir = tmp_path / "ckpt"
    result = train(["--data", str(kvasir), "--val-data", str(kvasir), "--epochs", "1", "--batch-size", "2",
                    "--size", "32", "--width", "8", "--heads", "1", "--dim-head", "8", "--mlp-dim", "16",
                    "--no-augment", "--device", "cpu", "--checkpoint-dir", str(ckpt_dir), "--no-progress"])
    scores = main([str(ckpt_dir / "best.pt"), str(kvasir), "--size", "32"])
    direct = score_test_set(probabilities(result.model.eval()), sets(kvasir)[0], size=32)
    assert scores[0].n == direct.n == 2
    assert scores[0].mean == direct.mean
    assert "Kvasir-SEG: 2 images" in capsys.readouterr().out
