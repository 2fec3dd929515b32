"""The exercises stay honest: every test passes on the reference (the package's own functions) and
fails on the untouched stub, and a student's answer file in the documented place is graded."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lessons.exercises import (EXERCISES_DIR, available_lessons, exercise_names, load_implementation, stub_path,
                               yours_or_reference)

pytestmark = pytest.mark.slow  # the grader runs every lesson's exercises in a subprocess, twice

REPO = Path(__file__).resolve().parents[2]
LESSONS = available_lessons()
TEST_FILES = sorted((EXERCISES_DIR / "tests").glob("test_lesson_*.py"))
CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff]")  # CJK Unified Ideographs (and extension A)


def exercise_test_titles(path: Path) -> dict[str, str]:
    """Each test function of an exercise test file and the first line of its docstring ('' if none)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name: (ast.get_docstring(node) or "").strip().split("\n")[0]
            for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def grade(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lessons.grade", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600)


def _results(tmp_path_factory, which: str) -> dict[int, list[dict]]:
    out = tmp_path_factory.mktemp(which) / "results.json"
    done = grade(*map(str, LESSONS), "--impl", which, "--json", str(out))
    assert out.is_file(), f"the grader crashed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    by_lesson: dict[int, list[dict]] = {lesson: [] for lesson in LESSONS}
    for result in json.loads(out.read_text()):
        by_lesson[result["lesson"]].append(result)
    return by_lesson


@pytest.fixture(scope="module")
def reference_results(tmp_path_factory):
    return _results(tmp_path_factory, "reference")


@pytest.fixture(scope="module")
def stub_results(tmp_path_factory):
    return _results(tmp_path_factory, "stub")


def test_there_are_exercises():
    assert set(range(1, 10)) <= set(LESSONS), LESSONS


@pytest.mark.parametrize("lesson", LESSONS)
def test_reference_passes_every_test(reference_results, lesson):
    results = reference_results[lesson]
    assert results, f"no test ran for lesson {lesson}"
    failed = [f"{r['exercise']}: {r['test']}\n{r['message']}" for r in results if r["outcome"] != "passed"]
    assert not failed, "the reference fails:\n" + "\n".join(failed)
    assert all(r["exercise"] != "?" for r in results), "every test must be named test_<exercise name>_..."


@pytest.mark.parametrize("lesson", LESSONS)
def test_stub_fails_every_test_with_its_own_message(stub_results, lesson):
    results = stub_results[lesson]
    assert results, f"no test ran for lesson {lesson}"
    passed = [r["test"] for r in results if r["outcome"] == "passed"]
    assert not passed, f"these tests pass on the untouched stub, so they cannot grade anything: {passed}"
    for r in results:  # the failure comes from the stub of that very exercise, not from a broken test
        number, name = r["exercise"].split()
        assert f"NotImplementedError: Exercise {number}: {name}" in r["message"], (r["test"], r["message"])


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_exercise_is_tested(reference_results, lesson):
    tested = {r["exercise"].split()[1] for r in reference_results[lesson]}
    assert tested == set(exercise_names(lesson))


@pytest.mark.parametrize("lesson", LESSONS)
def test_stub_signatures_are_the_reference_signatures(lesson):
    stub, reference = load_implementation(lesson, "stub"), load_implementation(lesson, "reference")
    for name in exercise_names(lesson):
        ours = list(inspect.signature(getattr(stub, name)).parameters)
        theirs = list(inspect.signature(getattr(reference, name)).parameters)
        assert ours == theirs, f"lesson {lesson} {name}: stub {ours} vs reference {theirs}"


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.stem)
def test_every_exercise_test_has_a_chinese_title(path):
    """The grader shows a test's first docstring line as its title; the course is in Chinese, so is the title."""
    titles = exercise_test_titles(path)
    assert titles, f"{path.name} defines no test"
    english = {name: title for name, title in titles.items() if not CJK.search(title)}
    assert not english, f"{path.name}: these tests need a docstring whose first line is a Chinese title: {english}"


def test_init_copies_the_stub_and_keeps_an_existing_answer(tmp_path):
    env = {"SCRATCH_LM_ANSWERS_DIR": str(tmp_path)}
    done = grade("2", "--init", env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lesson_2.py").read_text() == stub_path(2).read_text()
    again = grade("2", "--init", env=env)
    assert again.returncode != 0 and "--force" in again.stderr


def test_an_answer_in_the_documented_place_is_graded(tmp_path):
    env = {"SCRATCH_LM_ANSWERS_DIR": str(tmp_path)}
    answer = stub_path(2).read_text() + (
        "\n\ndef rotate_half(x):\n"
        "    x1, x2 = x.chunk(2, dim=-1)\n"
        "    return torch.cat((-x2, x1), dim=-1)\n"
        "\n\ndef default_inv_freq(dim, base):\n"
        "    return base ** (torch.arange(0, dim, 2).float() / dim)  # forgot the minus sign\n")
    (tmp_path / "lesson_2.py").write_text(answer)
    done = grade("2", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    title = exercise_test_titles(EXERCISES_DIR / "tests" / "test_lesson_2.py")["test_rotate_half_hand_computed"]
    assert f"PASS  {title}\n" in out, out
    assert "theta_i = base ** (-2i / dim)" in out, "the failing test's hint is printed"
    assert "Score: 2/11 tests passed; 1/4 exercises complete." in out, out


def test_a_terminal_without_chinese_still_gets_the_whole_report():
    done = grade("9", "--impl", "reference", env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  " in done.stdout and re.search(r"Score: (\d+)/\1 tests passed", done.stdout), done.stdout


def test_missing_answer_or_unknown_lesson_explains_what_to_do(tmp_path):
    env = {"SCRATCH_LM_ANSWERS_DIR": str(tmp_path)}
    missing = grade("2", env=env)
    assert missing.returncode == 2 and "--init" in missing.stderr
    unknown = grade("99", env=env)
    assert unknown.returncode == 2 and "no exercises" in unknown.stderr


def test_an_answer_that_does_not_import_is_reported_once(tmp_path):
    (tmp_path / "lesson_2.py").write_text("def rotate_half(x)\n    return x\n")
    done = grade("2", env={"SCRATCH_LM_ANSWERS_DIR": str(tmp_path)})
    assert done.returncode == 1 and "SyntaxError" in done.stdout and done.stdout.count("SyntaxError") == 1


def test_an_answer_that_raises_gets_the_exercise_hint(tmp_path):
    """When the student's code raises, the report says where and repeats what the exercise asks (once)."""
    answer = stub_path(2).read_text() + (
        "\n\ndef rotate_half(x):\n"
        "    x1, x2 = x.chunk(3, dim=-1)\n"  # three pieces: unpacking fails
        "    return torch.cat((-x2, x1), dim=-1)\n")
    (tmp_path / "lesson_2.py").write_text(answer)
    done = grade("2", env={"SCRATCH_LM_ANSWERS_DIR": str(tmp_path)})
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "你的代码抛出了异常：ValueError: too many values to unpack" in out, out
    assert "出错的位置：lesson_2.py:" in out, out
    hint = inspect.getdoc(load_implementation(2, "stub").rotate_half).splitlines()[0]
    assert out.count(hint) == 1, out


def test_solution_is_shown_only_after_an_attempt(tmp_path):
    env = {"SCRATCH_LM_ANSWERS_DIR": str(tmp_path)}
    before = grade("--solution", "2.3", env=env)
    assert before.returncode == 1 and "先自己试一试" in before.stderr and "def rotate_half" not in before.stdout
    (tmp_path / "lesson_2.py").write_text(stub_path(2).read_text() + "\n\ndef rotate_half(x):\n    return x\n")
    after = grade("--solution", "2.3", env=env)
    assert after.returncode == 0, after.stderr
    assert "def rotate_half" in after.stdout and "torch.cat" in after.stdout, after.stdout
    assert grade("--solution", "2.9", env=env).returncode == 1
    forced = grade("--solution", "5.8", "--force", env=env)
    assert forced.returncode == 0 and "def generate_with_cache" in forced.stdout


def test_a_notebook_cell_uses_your_answer_once_written_else_the_reference(tmp_path, monkeypatch, capsys):
    """distinct_n (exercise 5.11): no answer file, the untouched stub, then an answer of one's own."""
    monkeypatch.setenv("SCRATCH_LM_ANSWERS_DIR", str(tmp_path))
    rows = [[1, 2, 1, 2], [3, 3, 3, 3]]
    pairs = [tuple(row[i:i + 2]) for row in rows for i in range(len(row) - 1)]
    expected = len(set(pairs)) / len(pairs)  # distinct-2 by its definition: 3 different pairs among 6
    assert yours_or_reference(5, "distinct_n")(rows, 2) == pytest.approx(expected)
    assert "参考答案" in capsys.readouterr().out

    (tmp_path / "lesson_5.py").write_text(stub_path(5).read_text())  # --init: every function still a stub
    assert yours_or_reference(5, "distinct_n")(rows, 2) == pytest.approx(expected)
    assert "NotImplementedError" in capsys.readouterr().out

    (tmp_path / "lesson_5.py").write_text(stub_path(5).read_text() + "\n\ndef distinct_n(rows, n):\n    return 0.25\n")
    assert yours_or_reference(5, "distinct_n")(rows, 2) == 0.25  # a wrong answer runs as written
    assert "你的答案" in capsys.readouterr().out
    with pytest.raises(KeyError, match="distinct_m"):
        yours_or_reference(5, "distinct_m")
