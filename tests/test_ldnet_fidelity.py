"""LDNet after the encoder, against an independent re-typing with LDNet's parameter names.

``Reference`` below follows the structure of ``models/LDNet.py`` (ReaFly/LDNet): its
module names (so its ``state_dict`` keys are LDNet's), a per-image loop for the dynamic
convolution, the head updater's plain ``einsum`` SUM under the previous prediction
upsampled x2, and sigmoid outputs. Loading its weights into the package through
:func:`esa_tutorial.nn.ldnet.ldnet_key_map` must give the same five outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esa_tutorial.nn.blocks import ESABlock, LCABlock
from esa_tutorial.nn.ldnet import LDNet, ldnet_key_map

pytestmark = pytest.mark.usefixtures("one_thread")


class RefConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)  # with a bias, as LDNet's ConvBlock
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class RefDecoder(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = RefConv(cin, cin // 4), RefConv(cin // 4, cout)

    def forward(self, x):
        return F.interpolate(self.conv2(self.conv1(x)), scale_factor=2, mode="bilinear", align_corners=True)


class RefUpdater(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c
        self.pred_transform_layer, self.head_transform_layer = nn.Linear(c, 2 * c), nn.Linear(c, 2 * c)
        self.pred_gate, self.head_gate = nn.Linear(c, c), nn.Linear(c, c)
        self.pred_norm_in, self.head_norm_in = nn.LayerNorm(c), nn.LayerNorm(c)
        self.pred_norm_out, self.head_norm_out = nn.LayerNorm(c), nn.LayerNorm(c)
        self.fc_layer, self.fc_norm = nn.Linear(c, c), nn.LayerNorm(c)

    def forward(self, feat, head, pred):
        b, c, k = feat.shape[0], self.c, head.shape[-1]
        pred = torch.sigmoid(F.interpolate(pred, scale_factor=2, mode="bilinear", align_corners=False))
        lesion = torch.einsum("bnhw,bchw->bnc", pred, feat).reshape(b, c)  # a SUM over pixels
        head = head.reshape(b, c, k * k).permute(0, 2, 1)  # (B, K*K, C)
        p = self.pred_transform_layer(lesion)
        p_in, p_out = p[:, :c], p[:, c:]
        h = self.head_transform_layer(head)
        h_in, h_out = h[..., :c], h[..., c:]
        g = h_in * p_in[:, None]
        new = torch.sigmoid(self.pred_norm_in(self.pred_gate(g))) * self.pred_norm_out(p_out)[:, None]
        new = new + torch.sigmoid(self.head_norm_in(self.head_gate(g))) * self.head_norm_out(h_out)
        new = F.relu(self.fc_norm(self.fc_layer(new)))
        return new.permute(0, 2, 1).reshape(b, c, k, k)


class Reference(nn.Module):
    """LDNet after the encoder, stage channels w*(1, 1, 2, 4, 8), unified to w channels."""

    def __init__(self, w: int, heads: int, dim_head: int, mlp: int, k: int = 1) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = w, w, 2 * w, 4 * w, 8 * w
        blk = dict(heads=heads, dim_head=dim_head, mlp_dim=mlp)
        self.k, self.w = k, w
        self.decoder5 = RefDecoder(c5, c5)
        self.decoder4, self.decoder3 = RefDecoder(c5 + c4, c4), RefDecoder(c4 + c3, c3)
        self.decoder2, self.decoder1 = RefDecoder(c3 + c2, c2), RefDecoder(c2 + c1, c1)
        self.gobal_average_pool = nn.Sequential(nn.GroupNorm(16, c5), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.generate_head = nn.Linear(c5, w * k * k)
        self.headUpdators = nn.ModuleList(RefUpdater(w) for _ in range(4))
        self.unify1, self.unify2 = nn.Conv2d(c1, w, 1), nn.Conv2d(c2, w, 1)
        self.unify3, self.unify4, self.unify5 = nn.Conv2d(c3, w, 1), nn.Conv2d(c4, w, 1), nn.Conv2d(c5, w, 1)
        self.esa1, self.esa2, self.esa3, self.esa4 = (ESABlock(c, **blk) for c in (c1, c2, c3, c4))
        for e in (self.esa1, self.esa2, self.esa3, self.esa4):
            e.ESAlayer.impl = "reference"
        self.lca1, self.lca2, self.lca3, self.lca4 = (LCABlock(c, **blk) for c in (c2, c3, c4, c5))
        # LDNet registers the same modules a second time in lists: duplicate state-dict keys.
        self.decoderList = nn.ModuleList([self.decoder4, self.decoder3, self.decoder2, self.decoder1])
        self.esaList = nn.ModuleList([self.esa4, self.esa3, self.esa2, self.esa1])

    def dyn(self, feat, head):
        return torch.cat([F.conv2d(feat[i : i + 1], head[i : i + 1], padding=self.k // 2) for i in range(len(feat))])

    def forward(self, e1, e2, e3, e4, e5):
        d = self.decoder5(e5)
        head = self.generate_head(self.gobal_average_pool(e5).flatten(1)).reshape(-1, self.w, self.k, self.k)
        pred = self.dyn(self.unify5(d), head)
        outs = [pred]
        stages = [(e4, self.esa4, self.lca4, self.decoder4, self.unify4, 0),
                  (e3, self.esa3, self.lca3, self.decoder3, self.unify3, 1),
                  (e2, self.esa2, self.lca2, self.decoder2, self.unify2, 2),
                  (e1, self.esa1, self.lca1, self.decoder1, self.unify1, 3)]
        for e, esa, lca, dec, uni, i in stages:
            d = dec(torch.cat([lca(d, outs[-1]), esa(e)], dim=1))
            feat = uni(d)
            head = self.headUpdators[i](feat, head, pred)
            pred = self.dyn(feat, head)
            outs.append(pred)
        return tuple(torch.sigmoid(p) for p in outs[::-1])


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    # Non-trivial norms, running statistics and biases, so that a mix-up cannot hide.
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=generator, dtype=t.dtype) + 0.5)
                else:
                    t.add_(0.1 * torch.randn(t.shape, generator=generator, dtype=t.dtype))


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_ldnet_weights_renamed_give_ldnet_outputs(kernel_size: int) -> None:
    g = torch.Generator().manual_seed(0)
    sizes = dict(width=8, heads=2, dim_head=8, mlp_dim=16)
    ref = Reference(8, 2, 8, 16, kernel_size).double().eval()
    _randomise(ref, g)
    model = LDNet(kernel_size=kernel_size, seed=1, **sizes).double().eval()
    ldnet_state = ref.state_dict()
    mapping = ldnet_key_map(list(ldnet_state))
    # Every post-encoder parameter and buffer of the package is covered exactly once.
    post_encoder = {k for k in model.state_dict() if not k.startswith("encoder.")}
    assert sorted(mapping.values()) == sorted(post_encoder)
    assert not any("List" in k for k in mapping)
    missing, unexpected = model.load_state_dict({mapping[k]: ldnet_state[k] for k in mapping}, strict=False)
    assert unexpected == [] and all(k.startswith("encoder.") for k in missing)

    x = torch.rand(2, 3, 64, 64, generator=g, dtype=torch.float64)
    with torch.no_grad():
        expected = ref(*model.encoder(x))
        got = [torch.sigmoid(o) for o in model(x)]
        for e, o in zip(expected, got):
            torch.testing.assert_close(o, e, rtol=1e-10, atol=1e-12)
        # The mean pooling (our option) is a different function: this comparison can fail.
        for updater in model.updaters:
            updater.pooling = "mean"
        mean = [torch.sigmoid(o) for o in model(x)]
    assert (mean[0] - expected[0]).abs().max() > 1e-3
    torch.testing.assert_close(mean[-1], expected[-1])  # the coarsest output has no update
