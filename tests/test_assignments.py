"""Release of the exercise notebooks, the student versions kept in the repository, and reading submissions.

No kernel runs here; grading itself is tested in ``tests/test_course_grading.py``.
"""

from __future__ import annotations

import csv
import json
import re
import types
from pathlib import Path

import nbformat
import pytest

from esa_tutorial.course import grading, release, source
from esa_tutorial.course.__main__ import main

A = types.SimpleNamespace(**{**vars(release), **vars(grading), **vars(source), "main": main})
ROOT = Path(__file__).resolve().parents[1]
SOURCES = A.exercise_paths()
EXERCISES = SOURCES[0].parent
STUDENT = EXERCISES / "student"
EX1 = EXERCISES / "ex1_ppm.ipynb"


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def cell(nb: nbformat.NotebookNode, gid: str) -> nbformat.NotebookNode:
    (found,) = [c for c in nb.cells if A.grade_id(c) == gid]
    return found


# ----------------------------------------------------------------- release (no kernel)


def test_there_are_six_exercises_each_with_tests_hidden_tests_and_solutions():
    assert [p.stem for p in SOURCES] == [
        "ex1_ppm", "ex2_esa_forward", "ex3_cost_by_hand", "ex4_folding_step", "ex5_ldnet_experiment",
        "ex6_lca_broadcast",
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
    page = (ROOT / "book" / "instructors.md").read_text()
    for path in SOURCES:
        nb = read(path)
        row = re.search(rf"exercises/{path.stem}` \| [^|]+ \| (\d+) \((\d+) hidden\) \| (\d+) \|", page)
        assert row, f"book/instructors.md has no table row for {path.stem}"
        hidden = sum(A.nbgrader_meta(c)["points"] for c in nb.cells if A.is_test(c) and A.BEGIN_HIDDEN in c.source)
        written = sum(c.cell_type == "markdown" and A.is_solution(c) for c in nb.cells)
        assert tuple(map(int, row.groups())) == (A.max_score(nb), hidden, written), path.stem


def test_the_student_versions_in_the_repository_are_the_release_of_the_sources():
    """notebooks/exercises/student/ is what `release` writes; regenerate it after editing an exercise:
    python -m esa_tutorial.course release notebooks/exercises/student"""
    assert sorted(p.name for p in STUDENT.glob("*.ipynb")) == [p.name for p in SOURCES]
    for path in SOURCES:
        expected = nbformat.writes(A.release_notebook(read(path), path.name, None, ".."))
        assert (STUDENT / path.name).read_text() == expected + "\n" or \
            nbformat.writes(read(STUDENT / path.name)) == expected, (
            f"{path.name}: the student version is stale; run "
            "python -m esa_tutorial.course release notebooks/exercises/student")


def test_every_exercise_badge_opens_the_student_version():
    for path in SOURCES:
        for nb in (read(path), read(STUDENT / path.name)):
            links = A.COLAB_BADGE.findall(nb.cells[0].source)
            assert links and all(link.endswith(f"/notebooks/exercises/student/{path.name}") for link in links)


def test_student_versions_stub_solutions_remove_hidden_tests_and_outputs():
    for source_path in SOURCES:
        source, student = read(source_path), read(STUDENT / source_path.name)
        assert [A.grade_id(c) for c in source.cells] == [A.grade_id(c) for c in student.cells]
        text = "\n".join(c.source for c in student.cells)
        for marker in (A.BEGIN_SOLUTION, A.END_SOLUTION, A.BEGIN_HIDDEN, A.END_HIDDEN):
            assert marker not in text, (source_path.name, marker)
        assert "<summary>Solution</summary>" not in text
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
            elif src.cell_type == "code":
                assert stu.source == src.source


def test_student_versions_keep_their_links_working_from_their_folder():
    for path in STUDENT.glob("*.ipynb"):
        for c in read(path).cells:
            for target in A.RELATIVE_LINK.findall(c.source) if c.cell_type == "markdown" else []:
                assert (STUDENT / target).resolve().exists(), (path.name, target)


def test_written_solutions_are_html_details_that_colab_renders():
    for path in SOURCES:
        for c in read(path).cells:
            if c.cell_type == "markdown":
                assert ":::" not in c.source and "{doc}" not in c.source and "{cite}" not in c.source, path.name
            if c.cell_type == "markdown" and A.is_solution(c):
                assert c.source.startswith("<details>\n<summary>Solution</summary>\n\n"), (path.name, A.grade_id(c))
                assert c.source.rstrip().endswith("</details>")


def test_release_keeps_the_indent_of_the_solution():
    src = "def f(x):\n    'doc'\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    out = A._replace_region(src, A.BEGIN_SOLUTION, A.END_SOLUTION, A.CODE_STUB, "t")
    assert out == "def f(x):\n    'doc'\n    # YOUR CODE HERE\n    raise NotImplementedError()"


def test_release_with_colab_prefix_points_the_badge_at_the_course_copy(tmp_path):
    prefix = "https://colab.research.google.com/github/course/repo/blob/main/hw"
    A.release(tmp_path, EXERCISES, colab_prefix=prefix)
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


def test_only_answers_are_taken_the_tests_and_points_stay_the_instructors():
    source = read(EX1)
    student = A.release_notebook(source)
    cell(student, "ppm_check").source = "pass  # I made the test pass"
    cell(student, "ppm_solution").source = "my answer"
    copy = nbformat.from_dict(json.loads(json.dumps(cell(student, "ppm_check"))))
    fake = nbformat.v4.new_code_cell("pass")
    fake.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": "free_points", "points": 100}
    student.cells += [copy, fake]
    given = A.answers(student, source)
    assert given["ppm_solution"] == "my answer" and "ppm_check" not in given and "free_points" not in given
    cells = {c["id"]: c for c in A.plan(source, given, salt=3)["cells"] if c["id"]}
    assert cells["ppm_check"]["source"] == cell(source, "ppm_check").source
    assert A.BEGIN_HIDDEN in cells["ppm_hidden"]["source"]
    assert cells["ppm_solution"]["source"] == "my answer"
    assert "free_points" not in cells


def test_a_missing_answer_runs_as_the_stub():
    source = read(EX1)
    student = A.release_notebook(source)
    student.cells = [c for c in student.cells if A.grade_id(c) != "bins_solution"]
    cells = {c["id"]: c for c in A.plan(source, A.answers(student, source), salt=3)["cells"] if c["id"]}
    assert "raise NotImplementedError()" in cells["bins_solution"]["source"]


def test_submissions_are_named_by_folder_or_file(tmp_path):
    for rel in ("alice/ex1_ppm.ipynb", "bob/hw1/ex2_esa_forward.ipynb", "carol_ex1_ppm.ipynb",
                "dave/.ipynb_checkpoints/ex1_ppm-checkpoint.ipynb", "erin/notes.ipynb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    found = {(s, e.stem if e else None) for _, s, e in A.find_submissions(tmp_path, SOURCES)}
    assert found == {("alice", "ex1_ppm"), ("bob", "ex2_esa_forward"), ("carol", "ex1_ppm"), ("erin", None)}


# ----------------------------------------------------------------- fuzz round 2 (R6, R7): odd submissions


def test_a_fifo_named_like_a_notebook_is_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "ex1_ppm.ipynb")
    with pytest.raises(A.Malformed, match="not a regular file"):
        A.read_submission(tmp_path / "ex1_ppm.ipynb")


def test_an_oversized_notebook_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "ex1_ppm.ipynb"
    with open(big, "wb") as f:
        f.truncate(A.MAX_NOTEBOOK_BYTES + 1)  # sparse: no 20 MiB written
    with pytest.raises(A.Malformed, match=r"MiB the grader reads; clear the outputs"):
        A.read_submission(big)


def test_too_many_cells_are_refused_before_validation(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("") for _ in range(A.MAX_CELLS + 1)])
    path = tmp_path / "ex1_ppm.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(A.Malformed, match=f"{A.MAX_CELLS + 1} cells"):
        A.read_submission(path)


def test_deeply_nested_json_is_malformed_not_a_grader_error(tmp_path):
    path = tmp_path / "ex1_ppm.ipynb"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(A.Malformed, match="nested too deeply"):
        A.read_submission(path)


@pytest.mark.parametrize("nbgrader", [None, [], "x", {"grade_id": 5}])
def test_damaged_nbgrader_metadata_is_malformed_with_the_cell(tmp_path, nbgrader):
    nb = A.release_notebook(read(EX1))
    nb.cells[3].metadata["nbgrader"] = nbgrader
    path = tmp_path / "ex1_ppm.ipynb"
    path.write_text(json.dumps(nb))
    with pytest.raises(A.Malformed, match="cell 3 has damaged grading metadata"):
        A.read_submission(path)


def test_a_copied_answer_cell_is_refused_and_named():
    source = read(EX1)
    student = A.release_notebook(source)
    answer = nbformat.from_dict(json.loads(json.dumps(cell(student, "ppm_solution"))))
    answer.source = "def my_ppm(x, pooling_sizes=(1, 3, 5)):\n    return x"
    index = student.cells.index(cell(student, "ppm_solution"))
    student.cells.insert(index + 1, answer)  # Jupyter's copy-cell: the stub first, the answer in the copy
    with pytest.raises(A.Malformed, match=r"answer cell 'ppm_solution' appears 2 times .*delete the copies"):
        A.answers(student, source)


def test_names_and_reasons_are_printed_with_control_characters_escaped(tmp_path):
    forged = "x\n  zz_fake ex1_ppm.ipynb 7/7\x1b]0;title\x07\x1b[1A\x1b[2K\x1b[2J\u202e"
    g = A.Grade(student="eve\x1b[2J", notebook="ex1_ppm.ipynb", max_score=7, status="crashed", reason=forged)
    line = g.summary()
    assert all(ch.isprintable() for ch in line) and "\\x1b[2J" in line and "\\n  zz_fake" in line
    A.write_csv([g], tmp_path / "grades.csv")
    with open(tmp_path / "grades.csv", newline="", encoding="utf-8") as f:
        (row,) = csv.DictReader(f)
    assert row["reason"] == forged and row["student"] == "eve\x1b[2J"  # the CSV keeps the exact text
