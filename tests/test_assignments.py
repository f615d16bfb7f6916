"""Release and grading of the exercise notebooks.

The first half needs no kernel: what ``release`` writes and how submissions are
read and prepared. The second half grades real notebooks in two passes (one
with a long time limit, one with a short limit for the infinite loop) and
asserts on the CSV that ``python -m esa_tutorial.assignments grade`` writes.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from esa_tutorial import assignments as A

SOURCES = A.exercise_paths()
EX1 = A.EXERCISES / "ex1_ppm.ipynb"


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def cell(nb: nbformat.NotebookNode, gid: str) -> nbformat.NotebookNode:
    (found,) = [c for c in nb.cells if A.grade_id(c) == gid]
    return found


# ----------------------------------------------------------------- release (no kernel)


def test_there_are_five_exercises_each_with_tests_hidden_tests_and_solutions():
    assert [p.stem for p in SOURCES] == [
        "ex1_ppm", "ex2_esa_forward", "ex3_cost_by_hand", "ex4_folding_step", "ex5_ldnet_experiment",
    ]
    for path in SOURCES:
        nb = read(path)
        text = "\n".join(c.source for c in nb.cells)
        assert A.BEGIN_SOLUTION in text and A.BEGIN_HIDDEN in text, path.name
        assert A.max_score(nb) > 0
        for c in nb.cells:
            if A.is_solution(c) and c.cell_type == "code":
                assert "hide-input" in c.metadata.get("tags", []), (path.name, A.grade_id(c))


def test_instructors_page_states_the_points_the_notebooks_give():
    page = (A.ROOT / "book" / "instructors.md").read_text()
    for path in SOURCES:
        nb = read(path)
        row = re.search(rf"exercises/{path.stem}` \| [^|]+ \| (\d+) \((\d+) hidden\) \| (\d+) \|", page)
        assert row, f"book/instructors.md has no table row for {path.stem}"
        hidden = sum(A.nbgrader_meta(c)["points"] for c in nb.cells if A.is_test(c) and A.BEGIN_HIDDEN in c.source)
        written = sum(c.cell_type == "markdown" and A.is_solution(c) for c in nb.cells)
        assert tuple(map(int, row.groups())) == (A.max_score(nb), hidden, written), path.stem


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("released")
    assert A.main(["release", str(out)]) == 0
    return out


def test_release_stubs_solutions_removes_hidden_tests_and_outputs(released):
    for source_path in SOURCES:
        source, student = read(source_path), read(released / source_path.name)
        assert [A.grade_id(c) for c in source.cells] == [A.grade_id(c) for c in student.cells]
        text = "\n".join(c.source for c in student.cells)
        for marker in (A.BEGIN_SOLUTION, A.END_SOLUTION, A.BEGIN_HIDDEN, A.END_HIDDEN):
            assert marker not in text, (source_path.name, marker)
        assert "colab.research.google.com/github" not in text  # the badge would open the solutions
        for src, stu in zip(source.cells, student.cells):
            if stu.cell_type == "code":
                assert stu.outputs == [] and stu.execution_count is None
            assert "hide-input" not in stu.metadata.get("tags", [])
            if A.is_solution(src) and src.cell_type == "code":
                assert "raise NotImplementedError()" in stu.source and "# YOUR CODE HERE" in stu.source
                kept = src.source.split(A.BEGIN_SOLUTION)[0].rstrip().splitlines()
                assert stu.source.splitlines()[: len(kept)] == kept  # the skeleton before the answer stays
            elif A.is_solution(src):
                assert stu.source == A.ANSWER_STUB
            elif A.BEGIN_HIDDEN in src.source:
                assert stu.source == A.HIDDEN_NOTE
            else:
                assert stu.source == A.COLAB_BADGE.sub("", src.source).rstrip()


def test_release_keeps_the_indent_of_the_solution():
    src = "def f(x):\n    'doc'\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    out = A._replace_region(src, A.BEGIN_SOLUTION, A.END_SOLUTION, A.CODE_STUB, "t")
    assert out == "def f(x):\n    'doc'\n    # YOUR CODE HERE\n    raise NotImplementedError()"


def test_release_with_colab_prefix_points_the_badge_at_the_course_copy(tmp_path):
    prefix = "https://colab.research.google.com/github/course/repo/blob/main/hw"
    A.release(tmp_path, colab_prefix=prefix)
    assert f"]({prefix}/ex2_esa_forward.ipynb)" in read(tmp_path / "ex2_esa_forward.ipynb").cells[0].source


@pytest.mark.parametrize(
    "source, meta, match",
    [
        ("### BEGIN SOLUTION\nx = 1\n", {"solution": True, "grade_id": "a"}, "without '### END SOLUTION'"),
        ("x = 1\n### END SOLUTION\n", {"solution": True, "grade_id": "a"}, "without '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", {}, "solution markers but no nbgrader solution metadata"),
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", {"solution": True}, "needs an nbgrader grade_id"),
        ("x = 1\n", {"solution": True, "grade_id": "a"}, "needs '### BEGIN SOLUTION' markers"),
        ("### BEGIN HIDDEN TESTS\nassert 1\n", {"grade": True, "grade_id": "t", "points": 1}, "without '### END HIDDEN"),
    ],
)
def test_release_rejects_broken_authoring(source, meta, match):
    c = nbformat.v4.new_code_cell(source)
    if meta:
        c.metadata["nbgrader"] = meta
    with pytest.raises(A.AuthoringError, match=match):
        A.release_cell(c, "nb cell 0")


def test_release_needs_a_test_and_unique_ids():
    nb = read(EX1)
    nb.cells.append(nbformat.from_dict(json.loads(json.dumps(cell(nb, "ppm_check")))))
    with pytest.raises(A.AuthoringError, match=r"duplicate grade_id \['ppm_check'\]"):
        A.release_notebook(nb, "ex1")
    nb.cells = [c for c in nb.cells if not A.is_test(c)]
    with pytest.raises(A.AuthoringError, match="no test cell"):
        A.release_notebook(nb, "ex1")


# ----------------------------------------------------------------- reading and preparing submissions (no kernel)


def test_not_json_is_malformed(tmp_path):
    bad = tmp_path / "ex1_ppm.ipynb"
    bad.write_text("{this is not json")
    with pytest.raises(A.Malformed, match="not valid JSON"):
        A.read_submission(bad)
    bad.write_text(json.dumps({"cells": "nope"}))
    with pytest.raises(A.Malformed, match="not a valid Jupyter notebook"):
        A.read_submission(bad)


def test_prepare_puts_back_hidden_tests_and_undoes_edited_tests():
    source = read(EX1)
    student = A.release_notebook(source)
    cell(student, "ppm_check").source = "pass  # I made the test pass"
    prepared = A.prepare(student, source)
    assert cell(prepared, "ppm_check").source == cell(source, "ppm_check").source
    assert A.BEGIN_HIDDEN in cell(prepared, "ppm_hidden").source
    assert "raise NotImplementedError()" in cell(prepared, "ppm_solution").source  # the student's answer stays


def test_prepare_gives_no_points_to_added_or_copied_test_cells():
    source = read(EX1)
    student = A.release_notebook(source)
    copy = nbformat.from_dict(json.loads(json.dumps(cell(student, "ppm_check"))))
    fake = nbformat.v4.new_code_cell("pass")
    fake.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "free_points", "points": 100}
    student.cells += [copy, fake]
    prepared = A.prepare(student, source)
    assert A.max_score(prepared) == A.max_score(source)
    assert [A.grade_id(c) for c in prepared.cells].count("ppm_check") == 1


def test_prepare_rejects_missing_cells():
    source = read(EX1)
    student = A.release_notebook(source)
    student.cells = [c for c in student.cells if A.grade_id(c) != "ppm_check"]
    with pytest.raises(A.Malformed, match=r"cells \['ppm_check'\] of the assignment are missing"):
        A.prepare(student, source)


def test_submissions_are_named_by_folder_or_file(tmp_path):
    for rel in ("alice/ex1_ppm.ipynb", "bob/hw1/ex2_esa_forward.ipynb", "carol_ex1_ppm.ipynb",
                "dave/.ipynb_checkpoints/ex1_ppm-checkpoint.ipynb", "erin/notes.ipynb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    found = {(s, e.stem if e else None) for _, s, e in A.find_submissions(tmp_path, SOURCES)}
    assert found == {("alice", "ex1_ppm"), ("bob", "ex2_esa_forward"), ("carol", "ex1_ppm"), ("erin", None)}


# ----------------------------------------------------------------- grading real notebooks


def _write(nb: nbformat.NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _with(gid: str, source: str) -> nbformat.NotebookNode:
    nb = read(EX1)
    cell(nb, gid).source = source
    return nb


WRONG_PPM = """
def my_ppm(x, pooling_sizes=(1, 3, 5)):
    # column-major tokens: a classic mistake
    return torch.cat([torch.nn.functional.adaptive_avg_pool2d(x, s).transpose(-1, -2).flatten(2)
                      for s in pooling_sizes], dim=-1)
"""
LOOPING_BINS = """
def my_bins(length, bins):
    while True:
        pass
"""


def _rows(csv_path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == list(A.CSV_COLUMNS)
    return {(r["student"], r["notebook"]): r for r in rows}


@pytest.fixture(scope="module")
def graded(released, tmp_path_factory) -> dict[tuple[str, str], dict[str, str]]:
    """One grading pass over solutions, released notebooks and broken submissions."""
    subs = tmp_path_factory.mktemp("submissions")
    (subs / "solution").mkdir()
    for path in SOURCES:
        shutil.copy(path, subs / "solution" / path.name)
    shutil.copytree(released, subs / "released")
    _write(_with("ppm_solution", WRONG_PPM), subs / "wrong" / "ex1_ppm.ipynb")
    _write(_with("bins_solution", "raise RuntimeError('I broke my notebook')"), subs / "broken" / "ex1_ppm.ipynb")
    (subs / "notjson").mkdir()
    (subs / "notjson" / "ex1_ppm.ipynb").write_text("{this is not json")
    missing = read(EX1)
    missing.cells = [c for c in missing.cells if A.grade_id(c) != "ppm_check"]
    _write(missing, subs / "missing" / "ex1_ppm.ipynb")
    _write(read(EX1), subs / "stranger" / "homework.ipynb")
    out = subs / "grades.csv"
    assert A.main(["grade", str(subs), "--timeout", "600", "--jobs", "3", "--csv", str(out)]) == 0
    return _rows(out)


def test_solutions_score_full_marks(graded):
    for path in SOURCES:
        row = graded[("solution", path.name)]
        assert row["status"] == "graded" and row["reason"] == "", row
        assert float(row["score"]) == float(row["max_score"]) == A.max_score(read(path)) > 0, row
        assert "written answer" in row["feedback"]  # written answers are left to the teacher


def test_released_notebooks_fail_every_check_with_the_stub_message(graded):
    for path in SOURCES:
        row = graded[("released", path.name)]
        assert row["status"] == "graded" and float(row["score"]) == 0, row
        tests = [line for line in row["feedback"].splitlines() if line.split(" ")[0] in
                 {A.grade_id(c) for c in read(path).cells if A.is_test(c)}]
        assert len(tests) == sum(A.is_test(c) for c in read(path).cells)
        for line in tests:
            assert "CheckFailed" in line and "not implemented yet" in line, line


def test_wrong_answer_gets_partial_marks_and_the_hint(graded):
    row = graded[("wrong", "ex1_ppm.ipynb")]
    assert (row["status"], row["score"], row["max_score"]) == ("graded", "2", "7")
    feedback = row["feedback"]
    assert "bins_check (2/2): passed" in feedback
    assert "ppm_check (0/3): CheckFailed" in feedback and "column-major" in feedback
    assert "ppm_hidden (0/2)" in feedback


def test_code_that_raises_scores_zero_with_the_reason(graded):
    row = graded[("broken", "ex1_ppm.ipynb")]
    assert (row["status"], row["score"]) == ("graded", "0")
    assert row["reason"] == "your code raised an error in bins_solution: RuntimeError: I broke my notebook"
    assert "NameError" in row["feedback"]


def test_malformed_and_unknown_submissions_score_zero_with_a_reason(graded):
    row = graded[("notjson", "ex1_ppm.ipynb")]
    assert (row["status"], row["score"], row["max_score"]) == ("malformed", "0", "7")
    assert "not valid JSON" in row["reason"]
    row = graded[("missing", "ex1_ppm.ipynb")]
    assert row["status"] == "malformed" and "['ppm_check']" in row["reason"]
    row = graded[("stranger", "homework.ipynb")]
    assert row["status"] == "unknown" and "not one of the exercises" in row["reason"]


def test_infinite_loop_times_out_and_grading_goes_on(tmp_path):
    _write(_with("bins_solution", LOOPING_BINS), tmp_path / "a_looping" / "ex1_ppm.ipynb")
    (tmp_path / "b_after").mkdir()
    (tmp_path / "b_after" / "ex1_ppm.ipynb").write_text("")
    assert A.main(["grade", str(tmp_path), "--timeout", "5", "--jobs", "1"]) == 0
    rows = _rows(tmp_path / "grades.csv")
    loop = rows[("a_looping", "ex1_ppm.ipynb")]
    assert (loop["status"], loop["score"]) == ("timeout", "0")
    assert loop["reason"] == "the notebook did not finish within 5 s (an infinite loop?)"
    assert rows[("b_after", "ex1_ppm.ipynb")]["status"] == "malformed"
