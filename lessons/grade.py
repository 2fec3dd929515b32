"""Grade your answers to a lesson's exercises.

    python -m lessons.grade 5 --init     # copy the stubs to lessons/answers/lesson_5.py (once)
    # ... fill in the functions in lessons/answers/lesson_5.py ...
    python -m lessons.grade 5            # run the tests on your file: pass/fail per test, hints, a score
    python -m lessons.grade 5 --solution 5.8   # after trying: print the reference solution of exercise 5.8

From a notebook cell: `from lessons.grade import main; main(["5"])`.
`--impl reference` or `--impl stub` grades the package's own functions or the untouched stubs instead
(the project's test suite checks that the first passes everything and the second nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import shutil
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from lessons.exercises import (EXERCISES_DIR, IMPL_ENV, answer_path, available_lessons, exercise_names,
                               load_implementation, stub_path)

REPO_ROOT = EXERCISES_DIR.parents[1]


@dataclass
class TestResult:
    lesson: int
    exercise: str  # "5.3 top_p_filter"
    test: str  # the test's docstring (what it checks), else its name
    outcome: str  # "passed" | "failed"
    message: str  # the failure: the hint and what went wrong, or the exception the student's code raised
    where: str = ""  # for an exception raised in the graded file: "lesson_5.py:42" and that line


class _Collector:
    """A pytest plugin that keeps one TestResult per test."""

    def __init__(self, lesson: int) -> None:
        self.lesson = lesson
        self.names = exercise_names(lesson)
        self.descriptions: dict[str, str] = {}
        self.results: list[TestResult] = []

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            doc = (getattr(item, "function", None).__doc__ or "").strip().splitlines()
            params = f" [{item.callspec.id}]" if hasattr(item, "callspec") else ""
            self.descriptions[item.nodeid] = (doc[0] if doc else item.name) + params

    def pytest_runtest_logreport(self, report) -> None:
        failed_early = report.when == "setup" and not report.passed
        if report.when != "call" and not failed_early:
            return
        message, where = "", ""
        if not report.passed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr)
            where = _line_in_graded_file(report.longrepr)
        self.results.append(TestResult(self.lesson, self._exercise_of(report.nodeid),
                                       self.descriptions.get(report.nodeid, report.nodeid),
                                       "passed" if report.passed else "failed", _shorten(message), where))

    def _exercise_of(self, nodeid: str) -> str:
        """Tests are named test_<exercise name>_...: the longest matching name wins."""
        test_name = nodeid.split("::")[-1].removeprefix("test_")
        matches = [n for n in self.names if test_name.startswith(n)]
        if not matches:
            return "?"
        name = max(matches, key=len)
        return f"{self.lesson}.{self.names.index(name) + 1} {name}"


def _shorten(message: str, lines: int = 40) -> str:
    """The whole message unless it is very long (a printed tensor): then its first lines and a note."""
    kept = message.strip().splitlines()
    if len(kept) <= lines:
        return "\n".join(kept)
    return "\n".join(kept[:lines] + [f"... ({len(kept) - lines} more lines)"])


def _line_in_graded_file(longrepr) -> str:
    """'lesson_5.py:42: <that line>' for the deepest frame of the traceback inside the graded file, else ''."""
    graded = Path(os.environ.get(IMPL_ENV, "")).name
    entries = getattr(getattr(longrepr, "reprtraceback", None), "reprentries", [])
    for entry in reversed(entries):
        location = getattr(entry, "reprfileloc", None)
        if graded.endswith(".py") and location is not None and Path(location.path).name == graded:
            code = [line.strip() for line in getattr(entry, "lines", []) if line.startswith(">")]
            return f"{graded}:{location.lineno}" + (f"  {code[-1][1:].strip()}" if code else "")
    return ""


def exercise_hint(lesson: int, exercise: str) -> str:
    """What the exercise asks, from its stub's docstring (shown when the student's code raises)."""
    name = exercise.split()[-1]
    try:
        stub = load_implementation(lesson, "stub")
        doc = inspect.getdoc(getattr(stub, name)) or ""
    except Exception:  # a broken stub must not hide the student's own error
        return ""
    return "\n".join(doc.splitlines()[:12])


def run_tests(lesson: int, which: str) -> list[TestResult]:
    """Run lesson `lesson`'s exercise tests on `which` ("reference", "stub" or a .py path) in this process."""
    import pytest

    test_file = EXERCISES_DIR / "tests" / f"test_lesson_{lesson}.py"
    collector = _Collector(lesson)
    os.environ[IMPL_ENV] = which
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = pytest.main([str(test_file), "-q", "--tb=short", "--no-header", "-p", "no:cacheprovider",
                            "-o", "addopts=", "--rootdir", str(REPO_ROOT)], plugins=[collector])
    if code not in (0, 1) or not collector.results:  # 2+: interrupted, internal or usage error
        raise RuntimeError(f"pytest could not run {test_file} (exit code {code}):\n{output.getvalue()[-3000:]}")
    return collector.results


def import_problem(lesson: int, which: str) -> str | None:
    """Why the file cannot be graded at all (a syntax error, a missing function), or None."""
    try:
        load_implementation(lesson, which)
    except Exception as err:  # the student's file may raise anything while it is imported
        return "".join(traceback.format_exception_only(type(err), err)).strip()
    return None


def print_report(lesson: int, which: str, results: list[TestResult]) -> None:
    print(f"Lesson {lesson}: grading {which}\n")
    exercises = dict.fromkeys(r.exercise for r in results)
    hinted: set[str] = set()
    for exercise in exercises:
        print(f"Exercise {exercise}")
        for r in (r for r in results if r.exercise == exercise):
            print(f"  {'PASS' if r.outcome == 'passed' else 'FAIL'}  {r.test}")
            if r.message.startswith("NotImplementedError"):
                print("        还没有实现 (not implemented yet)")
            elif r.message.startswith("AssertionError"):  # the test's hint, then what went wrong
                print("        " + r.message.removeprefix("AssertionError: ").replace("\n", "\n        "))
            elif r.message:  # the student's code raised: say where, then what the exercise asks
                print("        你的代码抛出了异常：" + r.message.replace("\n", "\n        "))
                if r.where:
                    print(f"        出错的位置：{r.where}")
                hint = "" if r.exercise in hinted else exercise_hint(lesson, r.exercise)
                hinted.add(r.exercise)
                if hint:
                    print("        提示（练习要求）：" + hint.replace("\n", "\n            "))
    passed = sum(r.outcome == "passed" for r in results)
    done = [e for e in exercises if all(r.outcome == "passed" for r in results if r.exercise == e)]
    print(f"\nScore: {passed}/{len(results)} tests passed; {len(done)}/{len(exercises)} exercises complete.")
    print(f"得分：{passed}/{len(results)} 个测试通过；完成 {len(done)}/{len(exercises)} 个练习。")


def _attempted(lesson: int, name: str) -> bool:
    """The answer file exists and its `name` is no longer the untouched stub."""
    path = answer_path(lesson)
    if not path.is_file():
        return False
    try:
        mine = load_implementation(lesson, str(path))
        stub = load_implementation(lesson, "stub")
        return inspect.getsource(getattr(mine, name)) != inspect.getsource(getattr(stub, name))
    except Exception:  # an answer file that does not import: its exercise counts as tried
        return True


def show_solution(number: str, force: bool = False) -> str:
    """The source of the reference solution of exercise "N.M" (a package function or solutions/lesson_N.py)."""
    from lessons.exercises.reference import reference

    lesson_text, _, index_text = number.partition(".")
    if not (lesson_text.isdigit() and index_text.isdigit()):
        raise SystemExit(f"--solution takes an exercise number such as 5.8, got {number!r}")
    lesson, index = int(lesson_text), int(index_text)
    if lesson not in available_lessons():
        raise SystemExit(f"lesson {lesson} has no exercises; lessons with exercises: {available_lessons()}")
    names = exercise_names(lesson)
    if not 1 <= index <= len(names):
        raise SystemExit(f"lesson {lesson} has exercises {lesson}.1 .. {lesson}.{len(names)}, not {number}")
    name = names[index - 1]
    if not force and not _attempted(lesson, name):
        raise SystemExit(f"先自己试一试：在 {answer_path(lesson)} 里写 {name}（`python -m lessons.grade {lesson} --init`），"
                         f"评分之后再看参考答案。(Try exercise {number} in your answer file first; --force shows it now.)")
    solution = getattr(reference(lesson), name)
    where = f"{inspect.getsourcefile(solution)}:{inspect.getsourcelines(solution)[1]}"
    return f"# Exercise {number} {names[index - 1]}: the reference solution ({where})\n\n{inspect.getsource(solution)}"


def init_answer(lesson: int, force: bool) -> Path:
    """Copy the stub to lessons/answers/lesson_N.py (refuses to overwrite an answer without --force)."""
    target = answer_path(lesson)
    if target.exists() and not force:
        raise SystemExit(f"{target} already exists: it holds your answers. Use --force to start over.")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stub_path(lesson), target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.grade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", type=int, nargs="*", help="lesson number(s), e.g. 5")
    parser.add_argument("--solution", metavar="N.M", help="print the reference solution of exercise N.M "
                        "(try it first!)")
    parser.add_argument("--init", action="store_true", help="copy the stubs to lessons/answers/lesson_N.py")
    parser.add_argument("--force", action="store_true", help="with --init: overwrite an existing answer file; "
                        "with --solution: show it before trying")
    parser.add_argument("--impl", default=None,
                        help="what to grade: a .py file, 'reference' or 'stub' (default: lessons/answers/lesson_N.py)")
    parser.add_argument("--json", type=Path, help="also write every result to this JSON file")
    args = parser.parse_args(argv)
    if args.solution:
        print(show_solution(args.solution, args.force))
        return 0
    if not args.lessons:
        parser.error("name the lesson(s) to grade, e.g. `python -m lessons.grade 5`")

    known = available_lessons()
    for lesson in args.lessons:
        if lesson not in known:
            parser.error(f"lesson {lesson} has no exercises yet; lessons with exercises: {known}")
    if args.init:
        for lesson in args.lessons:
            print(f"wrote {init_answer(lesson, args.force)}: fill in the functions, then "
                  f"`python -m lessons.grade {lesson}`")
        return 0

    all_results: list[TestResult] = []
    for lesson in args.lessons:
        which = args.impl or str(answer_path(lesson))
        if which not in ("reference", "stub") and not Path(which).is_file():
            parser.error(f"{which} does not exist; create it with `python -m lessons.grade {lesson} --init`")
        problem = import_problem(lesson, which)
        if problem:
            print(f"Lesson {lesson}: cannot use {which}:\n{problem}\nFix it and grade again.")
            return 1
        results = run_tests(lesson, which)
        print_report(lesson, which, results)
        all_results += results
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in all_results], indent=1, ensure_ascii=False))
    return 0 if all(r.outcome == "passed" for r in all_results) else 1


if __name__ == "__main__":
    if hasattr(sys.stdout, "reconfigure"):  # a terminal that cannot show Chinese gets '?', not a crash mid-report
        sys.stdout.reconfigure(errors="replace")
    sys.exit(main())
