"""The record-and-replay of checks (esa_tutorial.course.tape), without a sandbox or a kernel."""

from __future__ import annotations

import io

import pytest
import torch

from esa_tutorial.course import checks, tape


def _good_bins(length, bins):
    return [((i * length) // bins, -((-(i + 1) * length) // bins)) for i in range(bins)]


def _record_then_replay(check, answer, salt=12345):
    """Run ``check`` on ``answer`` recording, save and load the tape, then judge it in replay."""
    recording = tape.Recording(salt)
    with tape.mode(recording):
        try:
            check(answer)
        except AssertionError:
            pass
    buffer = io.BytesIO()
    torch.save(recording.tape, buffer)
    entries = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    with tape.mode(tape.Replaying(entries, salt)):
        return check(lambda *a, **k: pytest.fail("replay must not call the student's code"))


def test_a_right_answer_passes_in_replay_and_a_wrong_one_fails_with_the_hint():
    assert _record_then_replay(checks.check_adaptive_bins, _good_bins)
    with pytest.raises(checks.CheckFailed, match="wrong bins"):
        _record_then_replay(checks.check_adaptive_bins, lambda length, bins: [(0, length)] * bins)


def test_a_prediction_given_as_a_set_survives_the_tape():
    assert _record_then_replay(checks.check_lca_zero_gradients, {"q", "k"})


def test_the_salt_changes_the_inputs_so_a_tape_of_one_grading_fails_another():
    recording = tape.Recording(1)
    with tape.mode(recording):
        checks.check_adaptive_bins(_good_bins)
    with tape.mode(tape.Replaying(recording.tape, 2)), pytest.raises(tape.TapeMismatch, match="other inputs"):
        checks.check_adaptive_bins(_good_bins)


def test_tampering_in_the_kernel_cannot_pass_a_wrong_answer(monkeypatch):
    wrong = lambda length, bins: [(0, 1)] * bins  # noqa: E731
    monkeypatch.setattr(checks, "adaptive_bins", wrong)  # the kernel's own comparison is fooled
    recording = tape.Recording(7)
    with tape.mode(recording):
        checks.check_adaptive_bins(wrong)
    monkeypatch.undo()
    with tape.mode(tape.Replaying(recording.tape, 7)), pytest.raises(checks.CheckFailed):
        checks.check_adaptive_bins(wrong)


def test_an_exception_of_the_student_is_replayed_by_name():
    def broken(length, bins):
        raise ZeroDivisionError("oops")

    with pytest.raises(checks.CheckFailed, match="raised ZeroDivisionError: oops"):
        _record_then_replay(checks.check_adaptive_bins, broken)


def test_plain_keeps_data_and_refuses_objects():
    value = tape.plain({"a": (1, 2.5, "x"), "t": torch.ones(2), "s": {3, 1}, "o": object()})
    assert value["a"] == (1, 2.5, "x") and value["s"] == [1, 3] and value["o"] == {"unrecordable": "object"}
    assert torch.equal(value["t"], torch.ones(2))


# ----------------------------------------------------------------- reading a tape back (fuzz round 2, R2)


def _saved(obj, deflate=False) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    if not deflate:
        return buffer.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    return out.getvalue()


def test_a_recorded_tape_loads_back_unchanged():
    recording = tape.Recording(7)
    with tape.mode(recording):
        checks.check_adaptive_bins(_good_bins)
    entries = tape.load(_saved(recording.tape), 2**23)
    assert entries == recording.tape and len(entries) == 7


@pytest.mark.parametrize("forged, reason", [
    (lambda: _saved([{"value": torch.zeros(1, dtype=torch.long).expand(3_000_000, 2)}]), "6000000 elements"),
    (lambda: _saved([{"value": torch.zeros(4).expand(100, 4)}]), "does not own its elements"),
    (lambda: _saved([{"value": torch.zeros(1000)}], deflate=True), "compressed member"),
    (lambda: _saved([[[0] * 1000] * 1000] * 1000), "more than 200000 recorded values"),
    (lambda: _saved([2**70]), "beyond 64 bits"),
    (lambda: _saved([torch.zeros(3, dtype=torch.complex64)]), "dtype torch.complex64"),
    (lambda: _saved({"not": "a list"}), "a tape is a list"),
    (lambda: b"PK\x03\x04 not really a zip", "not a readable torch file"),
])
def test_a_forged_tape_is_refused_before_it_is_materialised(forged, reason):
    with pytest.raises(tape.TapeError, match=reason):
        tape.load(forged(), 2**23)


def test_a_tape_larger_than_the_limit_is_refused():
    with pytest.raises(tape.TapeError, match="more than 1000 bytes"):
        tape.load(_saved([torch.zeros(1000)]), 1000)
