"""LDNet: shapes, ablation switches, the dynamic kernel head, the encoder weights option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esa_tutorial import MHSA, ESABlock, LCABlock
from esa_tutorial.checkpoints import CheckpointError
from esa_tutorial.nn.dynamic_head import HeadUpdater, KernelGenerator, dynamic_conv, lesion_feature
from esa_tutorial.nn.encoder import Encoder
from esa_tutorial.nn.ldnet import LDNet, skip_attention

TINY = dict(width=4, heads=1, dim_head=4, mlp_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_forward_on_224_gives_five_outputs_fine_to_coarse() -> None:
    model = LDNet().eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outputs] == [(1, 1, 224 // s, 224 // s) for s in (1, 2, 4, 8, 16)]
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("size", [(32, 64), (96, 160)])
def test_any_multiple_of_32_works(size: tuple[int, int]) -> None:
    h, w = size
    outputs = LDNet(**TINY)(torch.rand(2, 3, h, w))
    assert tuple(outputs[0].shape) == (2, 1, h, w)
    assert tuple(outputs[-1].shape) == (2, 1, h // 16, w // 16)


@pytest.mark.parametrize("size", [(100, 96), (64, 48), (16, 16)])
def test_other_sizes_get_a_clear_error(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=f"divisible by 32.*got {size[0]}x{size[1]}"):
        LDNet(**TINY)(torch.rand(1, 3, *size))


def test_wrong_channels_get_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"LDNet expects \(B, C, H, W\) with C=3, got \(1, 1, 64, 64\)"):
        LDNet(**TINY)(torch.rand(1, 1, 64, 64))


def test_images_in_a_batch_do_not_mix() -> None:
    # Each image gets its own kernel: the batched grouped convolution must not leak between images.
    model = LDNet(**TINY).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        together = model(x)
        alone = [model(x[i : i + 1]) for i in range(3)]
    for level, out in enumerate(together):
        torch.testing.assert_close(out, torch.cat([a[level] for a in alone]), rtol=1e-4, atol=1e-5)


def test_every_parameter_gets_a_gradient() -> None:
    model = LDNet(**TINY)
    sum(o.mean() for o in model(torch.rand(2, 3, 64, 64))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    assert model.encoder.stem[0].weight.grad.abs().sum() > 0


def test_paper_sized_has_ldnet_channels() -> None:
    model = LDNet.paper_sized()
    assert model.encoder.channels == (64, 64, 128, 256, 512)
    assert [b.ESAlayer.dim for b in model.skip_attention] == [256, 128, 64, 64]
    assert [b.LCAlayer.dim for b in model.lca] == [512, 256, 128, 64]
    assert (model.skip_attention[0].ESAlayer.heads, model.skip_attention[0].ESAlayer.dim_head) == (8, 64)


# --------------------------------------------------------------------------- ablation switches


def test_attention_switch_chooses_the_skip_block() -> None:
    esa, mhsa, none = (LDNet(attention=a, **TINY) for a in ("esa", "mhsa", "none"))
    assert all(isinstance(b, ESABlock) and type(b.ESAlayer).__name__ == "ESA" for b in esa.skip_attention)
    assert all(isinstance(b.ESAlayer, MHSA) for b in mhsa.skip_attention)
    assert all(isinstance(b, nn.Identity) for b in none.skip_attention)
    # ESA and MHSA have the same parameters: only where keys and values come from differs.
    assert esa.state_dict().keys() == mhsa.state_dict().keys()
    assert sum(p.numel() for p in esa.parameters()) == sum(p.numel() for p in mhsa.parameters())


def test_attention_none_means_no_skip_attention_and_use_esa_is_gone() -> None:
    model = LDNet(attention="none", **TINY)
    assert not any(isinstance(m, ESABlock) for m in model.modules())
    with pytest.raises(TypeError, match="use_esa"):
        LDNet(use_esa=False, **TINY)


@pytest.mark.parametrize("build", ["seed", "global"])
def test_shared_parts_start_equal_whatever_the_attention(build: str) -> None:
    variants = [("none", False), ("esa", False), ("mhsa", False), ("esa", True), ("mhsa", True)]
    models = []
    for attention, use_lca in variants:
        if build == "global":
            torch.manual_seed(3)
            models.append(LDNet(attention=attention, use_lca=use_lca, **TINY))
        else:
            models.append(LDNet(attention=attention, use_lca=use_lca, seed=3, **TINY))
    first = models[0].shared_state_dict()
    assert any(k.startswith("updaters.") for k in first) and any(k.startswith("decoders.") for k in first)
    for model in models[1:]:
        shared = model.shared_state_dict()
        assert shared.keys() == first.keys()
        for k in first:
            assert torch.equal(shared[k], first[k]), k
    # The attention blocks too: ESA and MHSA (same shapes) start equal, with or without LCA.
    esa, mhsa, esa_lca = models[1], models[2], models[3]
    for other in (mhsa, esa_lca):
        for a, b in zip(esa.skip_attention.parameters(), other.skip_attention.parameters()):
            assert torch.equal(a, b)
    # ... and another seed gives other weights.
    assert not torch.equal(LDNet(seed=4, **TINY).top_unify.weight, LDNet(seed=3, **TINY).top_unify.weight)


def test_default_init_has_torch_default_scale() -> None:
    # init_parameters redraws with torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    model = LDNet(seed=0, width=16)
    w = model.decoders[0][0][0].weight  # fan_in = 192 * 9
    bound = 1 / (w[0].numel() ** 0.5)
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.95 * bound
    torch.testing.assert_close(w.std().item(), bound / 3**0.5, rtol=0.05, atol=0)


def test_use_lca_false_removes_every_lca_block() -> None:
    model = LDNet(use_lca=False, **TINY)
    assert not any(isinstance(m, LCABlock) for m in model.modules())
    assert tuple(model(torch.rand(1, 3, 64, 64))[0].shape) == (1, 1, 64, 64)


def test_bad_attention_name() -> None:
    with pytest.raises(ValueError, match=r"attention must be one of \('esa', 'mhsa', 'none'\), got 'full'"):
        LDNet(attention="full", **TINY)


def test_mhsa_block_is_esa_block_when_pooling_keeps_every_pixel() -> None:
    # Pooling an 8x8 map to an 8x8 grid keeps every pixel, so ESA *is* full attention there:
    # an independent check that the swapped block computes attention over all pixels.
    esa = skip_attention("esa", 8, heads=2, dim_head=4, mlp_dim=16, pooling_sizes=(8,)).double()
    mhsa = skip_attention("mhsa", 8, heads=2, dim_head=4, mlp_dim=16).double()
    mhsa.load_state_dict(esa.state_dict())
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(mhsa(x), esa(x))


# --------------------------------------------------------------------------- dynamic kernel head


@pytest.mark.parametrize("k", [1, 3])
def test_dynamic_conv_matches_a_loop_over_images(k: int) -> None:
    features, kernel = torch.randn(3, 5, 7, 6), torch.randn(3, 5, k, k)
    expected = torch.cat([F.conv2d(features[i : i + 1], kernel[i : i + 1], padding=k // 2) for i in range(3)])
    torch.testing.assert_close(dynamic_conv(features, kernel), expected)


def test_dynamic_conv_rejects_mismatched_kernels() -> None:
    with pytest.raises(ValueError, match=r"kernel of shape \(2, 5, k, k\).*got \(2, 4, 1, 1\)"):
        dynamic_conv(torch.randn(2, 5, 4, 4), torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError, match="odd kernel size"):
        dynamic_conv(torch.randn(2, 5, 4, 4), torch.randn(2, 5, 2, 2))


def test_kernel_generator_makes_one_kernel_per_image() -> None:
    gen = KernelGenerator(top_channels=24, dim=6, kernel_size=3)
    kernel = gen(torch.randn(2, 24, 2, 2))
    assert tuple(kernel.shape) == (2, 6, 3, 3)
    assert not torch.allclose(kernel[0], kernel[1])


def test_head_updater_sums_under_the_previous_prediction_upsampled() -> None:
    # Hand-computed: previous logits on a 1x2 map, features on 2x4. Bilinear x2 upsampling
    # (align_corners=False) of a 1x2 row [a, b] gives columns [a, .75a+.25b, .25a+.75b, b].
    prev = torch.tensor([[[[0.0, 2.0]]]], dtype=torch.float64)
    features = torch.arange(16, dtype=torch.float64).reshape(1, 2, 2, 4)
    up = torch.tensor([0.0, 0.5, 1.5, 2.0], dtype=torch.float64)
    m = torch.sigmoid(up)  # the same weights in both rows
    f0 = (m * torch.tensor([0.0, 1, 2, 3])).sum() + (m * torch.tensor([4.0, 5, 6, 7])).sum()
    f1 = (m * torch.tensor([8.0, 9, 10, 11])).sum() + (m * torch.tensor([12.0, 13, 14, 15])).sum()
    expected_sum = torch.stack([f0, f1])[None]
    torch.testing.assert_close(lesion_feature(features, prev), expected_sum)
    torch.testing.assert_close(lesion_feature(features, prev, "mean"), expected_sum / (2 * m.sum() + 5e-4))
    with pytest.raises(ValueError, match=r"half the feature size, \(1, 1, 1, 2\).*got \(1, 1, 2, 4\)"):
        lesion_feature(features, torch.zeros(1, 1, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"pooling must be one of \('sum', 'mean'\), got 'max'"):
        HeadUpdater(4, pooling="max")  # type: ignore[arg-type]


def test_head_updater_uses_its_pooling() -> None:
    # The updater's lesion input is lesion_feature(...): check through the first projection.
    features = torch.randn(1, 4, 4, 4)
    prev = torch.randn(1, 1, 2, 2)
    kernel = torch.randn(1, 4, 1, 1)
    for pooling in ("sum", "mean"):
        updater = HeadUpdater(4, pooling=pooling).eval()
        seen = []
        updater.lesion_proj.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        updater(features, kernel, prev)
        torch.testing.assert_close(seen[0][:, 0], lesion_feature(features, prev, pooling))


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_head_updater_shape_and_gradcheck(pooling: str) -> None:
    updater = HeadUpdater(4, pooling=pooling).double()
    features = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(2, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    prev = torch.randn(2, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    assert tuple(updater(features, kernel, prev).shape) == (2, 4, 1, 1)
    assert torch.autograd.gradcheck(updater, (features, kernel, prev), fast_mode=True)


def test_head_updater_uses_the_lesion_where_the_prediction_points() -> None:
    # Features differ only outside the predicted lesion: with a confident mask, the update barely changes.
    updater = HeadUpdater(4).eval()
    kernel = torch.randn(1, 4, 1, 1)
    prev = torch.full((1, 1, 2, 2), -30.0)
    prev[..., 0, 0] = 30.0  # lesion = top-left quarter after upsampling
    a = torch.randn(1, 4, 4, 4)
    b = a.clone()
    b[..., 2:, 2:] += 5.0
    torch.testing.assert_close(updater(a, kernel, prev), updater(b, kernel, prev), rtol=1e-4, atol=1e-4)
    c = a.clone()
    c[..., :2, :2] += 5.0
    assert not torch.allclose(updater(a, kernel, prev), updater(c, kernel, prev), atol=1e-3)


# --------------------------------------------------------------------------- encoder weights


def test_pretrained_backbone_loads_a_saved_encoder(tmp_path) -> None:
    donor = Encoder(width=4)
    path = tmp_path / "encoder.pt"
    torch.save(donor.state_dict(), path)
    model = LDNet(pretrained_backbone=path, **TINY)
    for name, value in donor.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[name], value)


def test_pretrained_backbone_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot be downloaded here"):
        LDNet(pretrained_backbone=tmp_path / "res2net50.pth", **TINY)
    wrong = tmp_path / "wide.pt"
    torch.save(Encoder(width=8).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match the encoder.*wrong shapes"):
        LDNet(pretrained_backbone=wrong, **TINY)
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match=r"missing \['stages.0.conv1.0.weight'"):
        LDNet(pretrained_backbone=other, **TINY)
    with pytest.raises(TypeError, match="must be a path to a state dict or None, got int"):
        LDNet(pretrained_backbone=3, **TINY)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=r"pretrained_backbone: .*garbage\.pth"):
        LDNet(pretrained_backbone=garbage, **TINY)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)  # a tensor, not a state dict
    with pytest.raises(CheckpointError, match=r"pretrained_backbone: .*tensor\.pt"):
        LDNet(pretrained_backbone=tensor, **TINY)


def test_encoder_strides_and_channels() -> None:
    features = Encoder(width=4)(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [
        (2, 4, 32, 48), (2, 4, 16, 24), (2, 8, 8, 12), (2, 16, 4, 6), (2, 32, 2, 3)
    ]


# --------------------------------------------------------------------------- dtypes and modes


def test_float64_input_to_a_float32_ldnet_gets_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"LDNet parameters are torch.float32 but the input is torch.float64"):
        LDNet(**TINY)(torch.rand(1, 3, 32, 32, dtype=torch.float64))


def test_ldnet_runs_under_inference_mode_and_matches_no_grad() -> None:
    model = LDNet(**TINY).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    with torch.inference_mode():
        got = model(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("attention", ["none", "esa"])
def test_ldnet_with_lca_runs_under_cpu_autocast(attention: str) -> None:
    # Mixed precision as a GPU user trains: the whole network, ESA on its skips and LCA included.
    model = LDNet(attention=attention, use_lca=True, seed=0, **TINY).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert got[0].dtype == torch.bfloat16
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.float(), b, rtol=0.1, atol=0.2)


def test_ldnet_builds_on_the_meta_device() -> None:
    # Shapes only (used to count parameters and FLOPs without memory): no values to initialise.
    with torch.device("meta"):
        model = LDNet(**TINY)
    assert all(p.is_meta for p in model.parameters())


def test_ldnet_runs_on_meta_tensors() -> None:
    # Meta tensors have no autocast: the dtype check must not ask for it.
    with torch.device("meta"):
        model = LDNet(**TINY)
        outputs = model(torch.empty(1, 3, 64, 64))
    assert tuple(outputs[0].shape) == (1, 1, 64, 64) and outputs[0].is_meta


@pytest.mark.parametrize("kernel_size", [2, 4, 0, -1, 1.5, True])
def test_ldnet_refuses_a_kernel_size_that_is_not_a_positive_odd_integer(kernel_size):
    # Fuzz rounds 1 and 2: kernel_size=2 was accepted (an even kernel shifts the map by half a pixel).
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer"):
        LDNet(width=8, kernel_size=kernel_size)


def test_ldnet_refuses_a_sparse_image_by_name():
    with pytest.raises(TypeError, match="LDNet expects a dense .* got a sparse_coo tensor"):
        LDNet(width=8)(torch.randn(1, 3, 64, 64).to_sparse())
