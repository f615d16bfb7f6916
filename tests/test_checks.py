"""The student-facing checks: right code passes, each usual mistake gets its own actionable message."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
import torch
from einops import rearrange
from torch import nn

from esa_tutorial import PPM, num_tokens
from esa_tutorial.course import checks as course_checks
from esa_tutorial.course.checks import (
    CheckFailed,
    Passed,
    check_adaptive_bins,
    check_attention_bytes,
    check_esa,
    check_esa_flops,
    check_fold_query,
    check_ldnet_measurements,
    check_mhsa_flops,
    check_pool_then_project,
    check_ppm,
)

# ----------------------------------------------------------------- reference answers, written independently


def good_bins(length, bins):
    return [(math.floor(i * length / bins), math.ceil((i + 1) * length / bins)) for i in range(bins)]


def good_ppm(x, pooling_sizes=(1, 3, 5)):
    cells = []
    for s in pooling_sizes:
        for r0, r1 in good_bins(x.shape[-2], s):
            for c0, c1 in good_bins(x.shape[-1], s):
                cells.append(x[:, :, r0:r1, c0:c1].mean(dim=(-2, -1)))
    return torch.stack(cells, dim=-1)


class GoodESA(nn.Module):
    def __init__(self, dim, heads=8, dim_head=64, pooling_sizes=(1, 3, 5)):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))
        self.ppm = PPM(pooling_sizes)

    def project(self, x):
        q, k, v = self.to_qkv(x).chunk(3, dim=1)
        q = rearrange(q, "b (h d) x y -> b h (x y) d", h=self.heads)
        k, v = (rearrange(self.ppm(t), "b (h d) n -> b h n d", h=self.heads) for t in (k, v))
        return q, k, v

    def forward(self, x):
        q, k, v = self.project(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out(rearrange(attn @ v, "b h n d -> b n (h d)"))


def good_esa_flops(batch, dim, heads, dim_head, height, width, pooling_sizes=(1, 3, 5)):
    n, inner = height * width, heads * dim_head
    return 2 * batch * n * (4 * dim * inner + 2 * inner * num_tokens(pooling_sizes))


def good_mhsa_flops(batch, dim, heads, dim_head, height, width):
    n, inner = height * width, heads * dim_head
    return 2 * batch * n * (4 * dim * inner + 2 * inner * n)


def good_bytes(batch, heads, n_queries, n_keys, bytes_per_element=4):
    return batch * heads * n_queries * n_keys * bytes_per_element


def good_fold(w_q, k, heads, scale):
    a = torch.einsum(
        "hcd,bhdn->bhcn",
        rearrange(w_q, "(h d) c -> h c d", h=heads) * scale,
        rearrange(k, "b (h d) n -> b h d n", h=heads),
    )
    return rearrange(a, "b h c n -> b c (h n)")


def not_implemented(*args, **kwargs):
    raise NotImplementedError()


# ----------------------------------------------------------------- passing


@pytest.mark.parametrize(
    "check, answer",
    [
        (check_adaptive_bins, good_bins),
        (check_ppm, good_ppm),
        (check_esa, GoodESA),
        (check_esa_flops, good_esa_flops),
        (check_mhsa_flops, good_mhsa_flops),
        (check_attention_bytes, good_bytes),
        (check_pool_then_project, lambda x, w, sizes: w @ PPM(sizes)(x)),
        (check_fold_query, good_fold),
    ],
)
def test_right_answers_pass(check, answer):
    result = check(answer)
    assert isinstance(result, Passed) and result.startswith("✓") and repr(result) == str(result)


def test_checks_leave_the_students_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_esa(GoodESA)
    torch.testing.assert_close(torch.rand(3), expected)


# ----------------------------------------------------------------- failing with the intended message


@pytest.mark.parametrize(
    "check",
    [check_adaptive_bins, check_ppm, check_esa_flops, check_mhsa_flops, check_attention_bytes,
     check_pool_then_project, check_fold_query, check_ldnet_measurements],
)
def test_unimplemented_stub_is_reported_as_such(check):
    with pytest.raises(CheckFailed, match=r"(?s)not implemented yet .*Replace the line `raise NotImplementedError\(\)`"):
        check(not_implemented)


def test_unimplemented_esa_forward():
    class Stub(GoodESA):
        def forward(self, x):
            raise NotImplementedError()

    with pytest.raises(CheckFailed, match="your forward is not implemented yet"):
        check_esa(Stub)


def test_check_failed_is_an_assertion_error_for_graders_and_shows_only_its_message_in_ipython():
    assert issubclass(CheckFailed, AssertionError)
    with pytest.raises(CheckFailed) as info:
        check_ppm(not_implemented)
    assert info.value._render_traceback_() == [f"CheckFailed: {info.value}"]


def test_bins_rounded_down():
    def floor_bins(length, bins):
        return [(i * length // bins, (i + 1) * length // bins) for i in range(bins)]

    with pytest.raises(CheckFailed, match=r"(?s)length=7, bins=3:\n  expected \[\(0, 3\), \(2, 5\), \(4, 7\)\].*rounds the stop up"):
        check_adaptive_bins(floor_bins)


def test_bins_of_wrong_type():
    with pytest.raises(CheckFailed, match=r"(?s)list of \(start, stop\) pairs, got 3"):
        check_adaptive_bins(lambda length, bins: 3)


def test_ppm_shape_message_names_the_token_count():
    # The example of the issue: 9 tokens (only the 3x3 grid) where PPM gives 35.
    def only_3x3(x, sizes):
        return torch.nn.functional.adaptive_avg_pool2d(x, 3).flatten(2)

    with pytest.raises(
        CheckFailed,
        match=r"(?s)your output has shape \(2, 3, 9\) but PPM with sizes \(1, 3, 5\) gives 35 tokens per channel: "
        r"expected \(2, 3, 35\) for an input of shape \(2, 3, 15, 15\)",
    ):
        check_ppm(only_3x3)


def test_ppm_sum_instead_of_square():
    def one_per_size(x, sizes):
        return torch.cat([x.mean((2, 3), keepdim=True).flatten(2).expand(-1, -1, s) for s in sizes], -1)

    with pytest.raises(CheckFailed, match=r"(?s)you have sum\(s\) = 9 tokens; an s x s grid has s\*s cells"):
        check_ppm(one_per_size)


def test_ppm_column_major():
    def column_major(x, sizes):
        return torch.cat([torch.nn.functional.adaptive_avg_pool2d(x, s).transpose(-1, -2).flatten(2)
                          for s in sizes], -1)

    with pytest.raises(CheckFailed, match="column-major"):
        check_ppm(column_major)


def test_ppm_without_overlap_passes_divisible_maps_and_fails_the_others():
    def tiled(x, sizes):  # equal bins by integer division: right only when H, W are multiples of s
        cells = []
        for s in sizes:
            for i in range(s):
                for j in range(s):
                    h, w = x.shape[-2] // s, x.shape[-1] // s
                    cells.append(x[:, :, i * h:(i + 1) * h, j * w:(j + 1) * w].mean((-2, -1)))
        return torch.stack(cells, -1)

    with pytest.raises(CheckFailed, match=r"(?s)wrong values\n  on an input of shape \(1, 4, 7, 9\).*bins overlap"):
        check_ppm(tiled)


def test_ppm_student_exception_is_feedback_with_their_line():
    def broken(x, sizes):
        return x.view(x.shape[0], -1, 35)

    with pytest.raises(CheckFailed, match=r"(?s)your PPM raised RuntimeError: .*\n  on an input of shape .*\n  at line \d+ of your cell: `return x.view"):
        check_ppm(broken)


def test_ppm_returning_a_list():
    with pytest.raises(CheckFailed, match="should return a torch.Tensor, but returned list"):
        check_ppm(lambda x, sizes: [x])


def test_ppm_forbidden_adaptive_pooling():
    def builtin(x, sizes):
        return PPM(sizes)(x)

    assert check_ppm(builtin)  # allowed by default
    with pytest.raises(CheckFailed, match="calls torch's adaptive average pooling"):
        check_ppm(builtin, pooling_sizes=(1, 2, 3, 6), allow_adaptive_pool=False)
    assert check_ppm(good_ppm, pooling_sizes=(1, 2, 3, 6), allow_adaptive_pool=False)


def _esa_variant(forward):
    return type("Variant", (GoodESA,), {"forward": forward})


def test_esa_without_scale():
    def forward(self, x):
        q, k, v = self.project(x)
        attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return self.to_out(rearrange(attn @ v, "b h n d -> b n (h d)"))

    with pytest.raises(CheckFailed, match=r"(?s)wrong values.*\n.*\n.*Hint: you left out the scale 1/sqrt\(dim_head\)"):
        check_esa(_esa_variant(forward))


def test_esa_softmax_over_queries_gets_the_generic_recipe():
    def forward(self, x):
        q, k, v = self.project(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-2)
        return self.to_out(rearrange(attn @ v, "b h n d -> b n (h d)"))

    with pytest.raises(CheckFailed, match=r"(?s)softmax over the keys \(last axis"):
        check_esa(_esa_variant(forward))


def test_esa_transposed_output():
    def forward(self, x):
        return GoodESA.forward(self, x).transpose(1, 2)

    with pytest.raises(CheckFailed, match=r"(?s)returned shape \(2, 8, 63\), expected \(2, 63, 8\).*Hint: you returned \(B, C, H\*W\)"):
        check_esa(_esa_variant(forward))


def test_esa_detached_output():
    def forward(self, x):
        return GoodESA.forward(self, x).detach()

    with pytest.raises(CheckFailed, match="cut off from autograd"):
        check_esa(_esa_variant(forward))


def test_esa_wrong_parameter_names():
    class Renamed(GoodESA):
        def __init__(self, dim, heads=8, dim_head=64, pooling_sizes=(1, 3, 5)):
            super().__init__(dim, heads, dim_head, pooling_sizes)
            self.proj = self.to_out
            del self.to_out

    with pytest.raises(CheckFailed, match=r"(?s)parameters do not match ESA's.*\n.*ESA has .*'to_out.0.weight'.*\n  yours has .*'proj.0.weight'"):
        check_esa(Renamed)


def test_esa_constructor_with_wrong_signature():
    class NoPooling(GoodESA):
        def __init__(self, dim, heads=8, dim_head=64):
            super().__init__(dim, heads, dim_head)

    with pytest.raises(CheckFailed, match=r"(?s)your module raised TypeError: .*pooling_sizes"):
        check_esa(NoPooling)


def test_flops_counted_as_multiply_adds():
    with pytest.raises(CheckFailed, match="you counted multiply-adds"):
        check_esa_flops(lambda *a, **k: good_esa_flops(*a, **k) // 2)


def test_flops_without_output_projection_lists_the_measured_terms():
    def no_out(batch, dim, heads, dim_head, height, width, pooling_sizes=(1, 3, 5)):
        return good_esa_flops(batch, dim, heads, dim_head, height, width, pooling_sizes) - 2 * batch * height * width * heads * dim_head * dim

    with pytest.raises(CheckFailed, match=r"(?s)measures 1,622,016.*aten.convolution\): 786,432.*Hint: you left out the output projection to_out"):
        check_esa_flops(no_out)


def test_mhsa_flops_with_esa_formula():
    with pytest.raises(CheckFailed, match="your mhsa_flops gives"):
        check_mhsa_flops(lambda **k: good_esa_flops(**k))


def test_attention_bytes_as_elements():
    with pytest.raises(CheckFailed, match="that is the number of elements; multiply by bytes_per_element"):
        check_attention_bytes(lambda batch, heads, n_queries, n_keys, bytes_per_element: batch * heads * n_queries * n_keys)


def test_pool_then_project_that_projects_every_pixel():
    def literal(x, w, sizes):
        return PPM(sizes)(torch.nn.functional.conv2d(x, w[:, :, None, None]))

    with pytest.raises(CheckFailed, match=r"(?s)is right but spends [\d,]+ FLOPs.*\n.*\n.*pool x first"):
        check_pool_then_project(literal)


def test_fold_query_heads_interleaved():
    def interleaved(w_q, k, heads, scale):
        return rearrange(good_fold(w_q, k, heads, scale), "b c (h n) -> b c (n h)", h=heads)

    with pytest.raises(CheckFailed, match=r"(?s)ordered \(n_kv, heads\).*'\(h n\)'"):
        check_fold_query(interleaved)


def test_fold_query_without_scale():
    with pytest.raises(CheckFailed, match="you left out the scale; fold it into A"):
        check_fold_query(lambda w_q, k, heads, scale: good_fold(w_q, k, heads, 1.0))


def test_ldnet_measurements_missing_key_and_wrong_tokens():
    with pytest.raises(CheckFailed, match=r"(?s)lacks \['flops', 'attention_bytes'\]"):
        check_ldnet_measurements(lambda sizes, width, image_size: dict(tokens=35, parameters=1))
    with pytest.raises(CheckFailed, match=r"(?s)tokens=3, measured 35\n.*\n  Hint: an s x s grid gives s\*s tokens"):
        check_ldnet_measurements(
            lambda sizes, width, image_size: dict(tokens=len(sizes), parameters=0, flops=0, attention_bytes=0)
        )


def test_exercise_3_solutions_pass_every_random_draw_of_the_grader() -> None:
    # The grader draws sizes at random at grading time, the Identity output case
    # (heads == 1 and dim_head == dim) among them: the solution must hold for every draw.
    path = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "ex3_cost_by_hand.ipynb"
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    namespace: dict = {}
    exec("from esa_tutorial import num_tokens", namespace)
    for source in cells:
        if source.startswith(("def esa_flops", "def mhsa_flops")):
            exec(source, namespace)
    for seed in range(40):
        course_checks.check_esa_flops(namespace["esa_flops"], seed=seed)
        course_checks.check_mhsa_flops(namespace["mhsa_flops"], seed=seed)


# ----------------------------------------------------------------- fuzz round 2 (R3): shapes before values


def test_check_esa_refuses_gradients_of_the_wrong_shape(monkeypatch):
    # An empty gradient is allclose to anything (it broadcasts): 6/6 for a detached forward before.
    real = course_checks._run_esa

    def forged(*args, **kwargs):
        result = real(*args, **kwargs)
        return {**result, "dx": torch.zeros(0, 1, 1, 1, 1), "dw": torch.zeros(0, 1, 1, 1, 1)}

    monkeypatch.setattr(course_checks, "_run_esa", forged)
    with pytest.raises(CheckFailed, match=r"gradient .* has shape \(0, 1, 1, 1, 1\), expected \(2, 8, 7, 9\)"):
        check_esa(GoodESA)


def test_compare_refuses_a_broadcastable_or_complex_answer():
    expected = torch.ones(2, 3)
    with pytest.raises(CheckFailed, match=r"has shape \(1,\), expected \(2, 3\)"):
        course_checks._compare(torch.ones(1), expected, "x", "case")
    with pytest.raises(CheckFailed, match="dtype torch.complex64"):
        course_checks._compare(torch.ones(2, 3, dtype=torch.complex64), expected, "x", "case")


@pytest.mark.parametrize("got", [[1, 2], torch.ones(3), "12", float("inf"), True])
def test_a_count_must_be_one_finite_number(got):
    with pytest.raises(CheckFailed, match="should return a number|finite count"):
        course_checks._as_number(got, "your count", "case")
