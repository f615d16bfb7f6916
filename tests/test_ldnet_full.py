"""LDNet.full(): the paper's network on Res2Net-50 v1b, its weights in and out, and errors naming the file.

Counts come from running LDNet's own code (``../shared/reviews/2026-12-04-ldnet-full-model.md``):
902 state-dict keys, 766 distinct tensors, 33,375,608 parameters (encoder 23,669,352,
``reduce*`` 1,393,600, the rest 8,312,656), 524 keys in an ImageNet Res2Net-50 file.
Weight files are generated here from seeded weights; nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from esa_tutorial import LDNet
from esa_tutorial.checkpoints import CheckpointError, save_checkpoint
from esa_tutorial.nn.ldnet import ldnet_key_map
from esa_tutorial.nn.ldnet_weights import (
    describe_state_dict, ldnet_checkpoint_to_package, ldnet_key, ldnet_state_dict, load_res2net_weights,
)
from esa_tutorial.nn.res2net import DEPTHS, Res2Net, res2net50_v1b

pytestmark = pytest.mark.usefixtures("one_thread")
MANIFEST = Path(__file__).parent / "fixtures" / "ldnet_full_keys.txt"
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def full() -> LDNet:
    """One LDNet.full() for the module, with every BN's statistics drawn too (so they are checked)."""
    model = LDNet.full(seed=1)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def ldnet_file(full: LDNet, tmp_path_factory) -> Path:
    """full's weights as LDNet's train.py writes them: torch.save of a 902-key state dict."""
    path = tmp_path_factory.mktemp("ldnet") / "ck_80.pth"
    torch.save(ldnet_state_dict(full), path)
    return path


def res2net_imagenet_state(seed: int, layers=DEPTHS[50]) -> dict[str, torch.Tensor]:
    """An ImageNet-style Res2Net v1b file's contents: the backbone's keys plus the classifier fc (1000 classes)."""
    torch.manual_seed(seed)
    state = dict(Res2Net(layers).state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    return state


def manifest() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in MANIFEST.read_text().splitlines():
        key, shape = line.split(" ")
        rows.append((key, () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))))
    return rows


# ----------------------------------------------------------------------------------- structure


def test_full_has_ldnets_parameter_counts(full: LDNet) -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(full) == 33_375_608
    assert count(full.encoder.backbone) == 23_669_352
    assert count(full.encoder.reduce) == 1_393_600
    # Everything after the encoder is paper_sized()'s, which the review measured equal to LDNet's.
    assert count(full) - count(full.encoder) == 8_312_656 == count(LDNet.paper_sized()) - count(
        LDNet.paper_sized().encoder)


def test_full_forward_shapes_on_a_small_input(full: LDNet) -> None:
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = full.encoder.backbone(x)
        reduced = full.encoder(x)
        outputs = full(x)
    assert [tuple(f.shape) for f in features] == [(1, 64, 32, 32), (1, 256, 16, 16), (1, 512, 8, 8),
                                                   (1, 1024, 4, 4), (1, 2048, 2, 2)]
    assert [tuple(f.shape) for f in reduced] == [(1, 64, 32, 32), (1, 64, 16, 16), (1, 128, 8, 8),
                                                 (1, 256, 4, 4), (1, 512, 2, 2)]
    assert torch.equal(reduced[0], features[0])  # e1 is the stem's output, not reduced (as in LDNet)
    assert [tuple(o.shape) for o in outputs] == [(1, 1, 64 // s, 64 // s) for s in (1, 2, 4, 8, 16)]
    # Logits, not probabilities: values outside [0, 1] occur.
    assert any(bool(((o < 0) | (o > 1)).any()) for o in outputs)


def test_full_fixes_width_64() -> None:
    with pytest.raises(ValueError, match="width must be 64, got 32"):
        LDNet.full(width=32)
    with pytest.raises(ValueError, match="encoder must be one of"):
        LDNet(encoder="res2net18")


def _bn(x, state, name):
    return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                        state[f"{name}.bias"], training=False, eps=1e-5)


def res2net_oracle(state: dict[str, torch.Tensor], x: torch.Tensor, layers=DEPTHS[50]) -> list[torch.Tensor]:
    """Res2Net v1b 26w x 4s in eval mode from the paper, written with torch.nn.functional on a state dict."""
    relu = F.relu
    y = relu(_bn(F.conv2d(x, state["conv1.0.weight"], stride=2, padding=1), state, "conv1.1"))
    y = relu(_bn(F.conv2d(y, state["conv1.3.weight"], padding=1), state, "conv1.4"))
    e1 = relu(_bn(F.conv2d(y, state["conv1.6.weight"], padding=1), state, "bn1"))
    out, y = [e1], F.max_pool2d(e1, 3, 2, 1)
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            h = relu(_bn(F.conv2d(y, state[f"{p}.conv1.weight"]), state, f"{p}.bn1"))
            parts = list(h.chunk(4, dim=1))  # 4 groups of 26 * planes / 64 channels
            new, prev = [], None
            for i in range(3):
                inp = parts[i] if (b == 0 or i == 0) else prev + parts[i]
                prev = relu(_bn(F.conv2d(inp, state[f"{p}.convs.{i}.weight"], stride=stride, padding=1),
                                state, f"{p}.bns.{i}"))
                new.append(prev)
            new.append(F.avg_pool2d(parts[3], 3, stride, 1) if b == 0 else parts[3])
            h = _bn(F.conv2d(torch.cat(new, 1), state[f"{p}.conv3.weight"]), state, f"{p}.bn3")
            if b == 0:  # v1b shortcut: average 2x2 first (nothing at stride 1), then 1x1 conv + BN
                s = F.avg_pool2d(y, stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else y
                s = _bn(F.conv2d(s, state[f"{p}.downsample.1.weight"]), state, f"{p}.downsample.2")
            else:
                s = y
            y = relu(h + s)
        out.append(y)
    return out


def test_res2net_matches_a_functional_oracle_in_float64(full: LDNet) -> None:
    backbone = full.encoder.backbone
    state = {k: v.double() for k, v in backbone.state_dict().items()}
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ours = backbone.double()(x)
    backbone.float()
    for got, want in zip(ours, res2net_oracle(state, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------- LDNet's layout


def test_manifest_has_ldnets_counts_and_names(full: LDNet) -> None:
    rows = manifest()
    keys = [k for k, _ in rows]
    shapes = dict(rows)
    aliases = [k for k in keys if k.split(".")[0] in ("decoderList", "unifyList", "esaList", "lcaList")]
    assert len(keys) == len(set(keys)) == 902 and len(aliases) == 136 and len(keys) - len(aliases) == 766
    params = sum(torch.Size(s).numel() for k, s in rows if k not in aliases and not k.endswith(BUFFERS))
    assert params == 33_375_608
    # Names and shapes read in models/LDNet.py and models/res2net.py (ReaFly/LDNet).
    assert shapes["encoder1_conv.0.weight"] == (32, 3, 3, 3)
    assert shapes["encoder1_conv.6.weight"] == (64, 32, 3, 3)
    assert shapes["encoder1_bn.weight"] == (64,)
    assert shapes["encoder2.0.downsample.1.weight"] == (256, 64, 1, 1)
    assert shapes["encoder3.0.convs.2.weight"] == (52, 52, 3, 3)
    assert shapes["encoder4.5.bns.2.running_var"] == (104,)
    assert shapes["encoder5.2.conv3.weight"] == (2048, 832, 1, 1)
    assert shapes["reduce5.weight"] == (512, 2048, 1, 1) and shapes["reduce2.bias"] == (64,)
    assert shapes["decoder4.conv1.conv.weight"] == (192, 768, 3, 3)
    assert shapes["gobal_average_pool.0.weight"] == (512,)
    assert shapes["generate_head.weight"] == (64, 512)
    assert shapes["headUpdators.3.fc_norm.bias"] == (64,)
    assert shapes["esa4.ESAlayer.to_qkv.weight"] == shapes["esaList.0.ESAlayer.to_qkv.weight"] == (1536, 256, 1, 1)
    assert shapes["lca4.LCAlayer.to_out.0.weight"] == (512, 512)
    assert shapes["unifyList.3.weight"] == shapes["unify1.weight"] == (64, 64, 1, 1)
    # The export of the package's model is exactly this manifest, in order.
    exported = ldnet_state_dict(full)
    assert [(k, tuple(v.shape)) for k, v in exported.items()] == rows
    assert len({v.data_ptr() for v in exported.values()}) == 766  # aliases share storage, as in LDNet


def test_ldnet_key_is_the_inverse_of_ldnet_key_map(full: LDNet) -> None:
    """ldnet_key (new, whole network) and ldnet_key_map (the existing post-encoder map) agree on all 236 keys."""
    post_encoder = {ldnet_key(k): k for k in full.state_dict() if not k.startswith("encoder.")}
    assert len(post_encoder) == 236
    assert ldnet_key_map(list(post_encoder)) == post_encoder


# ----------------------------------------------------------------------------------- LDNet checkpoints in


def test_from_ldnet_checkpoint_loads_train_py_file(full: LDNet, ldnet_file: Path) -> None:
    model = LDNet.from_ldnet_checkpoint(ldnet_file)
    assert not model.training
    mine, theirs = model.state_dict(), full.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), full(x), strict=True):
            assert torch.equal(a, b)


def test_from_ldnet_checkpoint_keeps_float32_and_trains(full: LDNet, tmp_path: Path) -> None:
    """A half-precision file gives a float32 model whose parameters take gradients (built on meta, then assigned)."""
    path = tmp_path / "half.pth"
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in ldnet_state_dict(full).items()}, path)
    model = LDNet.from_ldnet_checkpoint(path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(p.requires_grad and not p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())
    torch.testing.assert_close(model.top_unify.weight, full.top_unify.weight, rtol=1e-3, atol=1e-3)


def test_ldnet_checkpoint_forms_accepted(full: LDNet) -> None:
    exported = ldnet_state_dict(full)
    target = LDNet.full(seed=2)
    aliases = {k for k in exported if k.split(".")[0].endswith("List")}
    forms = {
        "902 keys": exported,
        "DataParallel": {f"module.{k}": v for k, v in exported.items()},
        "deduplicated": {k: v for k, v in exported.items() if k not in aliases},
        # deduplicated the other way: the list entries kept, decoder4/unify4/esa4/lca4... dropped
        "aliases kept": {k: v for k, v in exported.items() if not re.match(r"(decoder|unify|esa|lca)[1-4]\.", k)},
    }
    assert len(forms["deduplicated"]) == 766 == len(forms["aliases kept"])
    want = full.state_dict()
    for name, state in forms.items():
        converted = ldnet_checkpoint_to_package(state, target)
        target.load_state_dict(converted, strict=True)
        assert all(torch.equal(v, want[k]) for k, v in target.state_dict().items()), name


def test_an_alias_that_differs_is_an_error(full: LDNet) -> None:
    state = dict(ldnet_state_dict(full))
    state["esaList.1.ff.norm.weight"] = state["esaList.1.ff.norm.weight"] + 1
    with pytest.raises(CheckpointError, match=r"esaList.1.ff.norm.weight is an alias of esa3.ff.norm.weight"):
        ldnet_checkpoint_to_package(state, full, "edited.pth")


def test_ldnet_checkpoint_errors_name_file_contents_and_keys(full: LDNet, tmp_path: Path) -> None:
    # A Res2Net ImageNet file given as an LDNet checkpoint.
    res2net = tmp_path / "res2net50_v1b_26w_4s-3cf99910.pth"
    torch.save(res2net_imagenet_state(0), res2net)
    with pytest.raises(CheckpointError) as err:
        LDNet.from_ldnet_checkpoint(res2net)
    msg = str(err.value)
    assert str(res2net) in msg and "Res2Net-50 v1b 26w x 4s weights (524 keys, with an ImageNet classifier" in msg
    assert "766 missing (first: ['encoder1_conv.0.weight'" in msg and "524 unexpected (first: ['conv1.0.weight'" in msg
    assert "pretrained_backbone" in msg
    # A wrong shape names the key and both shapes.
    state = dict(ldnet_state_dict(full))
    state["reduce3.weight"] = torch.zeros(64, 512, 1, 1)
    with pytest.raises(CheckpointError, match=r"1 of another shape .*reduce3.weight \(64, 512, 1, 1\) "
                                              r"\(expected \(128, 512, 1, 1\)\)"):
        ldnet_checkpoint_to_package(state, full, "x.pth")
    # The small-encoder LDNet's LDNet-named weights are not the full network.
    with pytest.raises(KeyError, match="not a key of LDNet.full"):
        ldnet_key("encoder.stem.0.weight")


@pytest.mark.parametrize("content, expect", [
    (b"", "is empty"),
    (b"not a checkpoint at all\n", "not a readable torch file"),
])
def test_non_checkpoint_files_are_named(tmp_path: Path, content: bytes, expect: str) -> None:
    path = tmp_path / "ck.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expect) as err:
        LDNet.from_ldnet_checkpoint(path)
    assert str(path) in str(err.value) and str(err.value).startswith("LDNet checkpoint: ")


def test_truncated_checkpoint_is_named(ldnet_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ldnet_file.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match="not a readable torch file") as err:
        LDNet.from_ldnet_checkpoint(cut)
    assert str(cut) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no file at"):
        LDNet.from_ldnet_checkpoint(tmp_path / "missing.pth")


def test_package_checkpoint_given_as_ldnet_file_says_which_loader(tmp_path: Path) -> None:
    small = LDNet(width=8, heads=1, dim_head=8, mlp_dim=16, seed=0)
    path = save_checkpoint(tmp_path / "best.pt", small.state_dict(), config={})
    with pytest.raises(CheckpointError, match="save_checkpoint") as err:
        LDNet.from_ldnet_checkpoint(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------- ImageNet Res2Net in


def test_pretrained_backbone_loads_res2net_file_and_ignores_fc(full: LDNet, tmp_path: Path) -> None:
    state = res2net_imagenet_state(3)
    assert len(state) == 524  # the authors' and timm's file: 522 backbone keys + fc.weight, fc.bias
    path = tmp_path / "res2net50d.pth"
    torch.save(state, path)
    model = LDNet.full(pretrained_backbone=path, seed=1)
    loaded = model.encoder.backbone.state_dict()
    assert len(loaded) == 522 and all(torch.equal(loaded[k], state[k]) for k in loaded)
    # The rest of the network keeps its seeded initial weights (those of the fixture, also seed 1).
    assert torch.equal(model.encoder.reduce[0].weight, full.encoder.reduce[0].weight)
    assert torch.equal(model.top_unify.weight, full.top_unify.weight)
    # A DataParallel prefix is accepted too.
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    backbone = res2net50_v1b()
    load_res2net_weights(backbone, path)
    assert all(torch.equal(v, loaded[k]) for k, v in backbone.state_dict().items())


def test_pretrained_backbone_rejects_other_files(full: LDNet, ldnet_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_res2net_weights(res2net50_v1b(), ldnet_file)  # what LDNet.full(pretrained_backbone=...) calls
    msg = str(err.value)
    assert str(ldnet_file) in msg and "an LDNet state dict of 902 keys (136 of them '*List' aliases)" in msg
    assert "522 missing (first: ['conv1.0.weight'" in msg and "from_ldnet_checkpoint" in msg
    # Res2Net-101: the same first blocks, 17 more in layer3 (shared tensors keep the file small).
    deeper = res2net_imagenet_state(4)
    for b in range(6, 23):
        deeper.update({k.replace("layer3.5.", f"layer3.{b}."): v for k, v in deeper.items()
                       if k.startswith("layer3.5.")})
    path = tmp_path / "res2net101_v1b_26w_4s.pth"
    torch.save(deeper, path)
    with pytest.raises(CheckpointError, match=r"Res2Net-101 v1b 26w x 4s weights .*"
                                              r"510 unexpected \(first: \['layer3.6.conv1.weight'") as err:
        load_res2net_weights(res2net50_v1b(), path)
    assert str(path) in str(err.value)


def test_describe_names_common_lookalikes() -> None:
    seven = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.convs.0.weight": torch.zeros(26, 26, 3, 3)}
    assert "7x7 stem" in describe_state_dict(seven) and "res2net50_26w_4s" in describe_state_dict(seven)
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv2.weight": torch.zeros(64, 64, 3, 3)}
    assert describe_state_dict(resnet).startswith("ResNet weights (2 keys)")
    package = LDNet(width=8, heads=1, dim_head=8, mlp_dim=16, seed=0).state_dict()
    assert "this package's LDNet" in describe_state_dict(package)


def test_res2net_equals_timm_res2net50d_bit_for_bit() -> None:
    """Where timm imports (Colab; not here, where torchvision does not load), timm's res2net50d is our Res2Net."""
    timm = pytest.importorskip("timm")
    theirs = timm.create_model("res2net50d", pretrained=False).eval()
    state = theirs.state_dict()
    assert len(state) == 524
    ours = res2net50_v1b().eval()
    ours.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
    captured: list[torch.Tensor] = []
    for name in ("act1", "layer1", "layer2", "layer3", "layer4"):  # timm's e1..e5
        getattr(theirs, name).register_forward_hook(lambda module, args, out: captured.append(out.clone()))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        theirs(x)
        mine = ours(x)
    assert len(captured) == 5
    for a, b in zip(mine, captured, strict=True):
        assert torch.equal(a, b)


def test_full_trains_every_parameter() -> None:
    """One backward pass of the five-output loss reaches every parameter of LDNet.full() (batch 2, 32x32)."""
    model = LDNet.full(seed=3).train()
    x = torch.rand(2, 3, 32, 32)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    loss = sum(F.binary_cross_entropy_with_logits(o, F.interpolate(target, size=o.shape[-2:])) for o in model(x))
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert bool(torch.isfinite(loss))
