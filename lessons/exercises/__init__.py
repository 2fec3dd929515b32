"""Self-graded exercises: one stub file per lesson, graded by the tests in `tests/`.

    lessons/exercises/lesson_N.py        the stubs: each raises NotImplementedError("Exercise N.M: ...")
    lessons/exercises/reference.py       the reference solutions: the package's own functions, imported
    lessons/exercises/tests/test_lesson_N.py   the tests, run against any implementation of the lesson
    lessons/answers/lesson_N.py          your answers (`python -m lessons.grade N --init` copies the stub there;
                                         set SCRATCH_LM_ANSWERS_DIR to keep them in another folder)

The tests read the implementation to grade from the environment variable SCRATCH_LM_EXERCISE_IMPL:
"reference" (the default), "stub", or the path of a .py file such as lessons/answers/lesson_5.py.
`python -m lessons.grade N` sets it for you.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType, SimpleNamespace

IMPL_ENV = "SCRATCH_LM_EXERCISE_IMPL"
ANSWERS_ENV = "SCRATCH_LM_ANSWERS_DIR"
EXERCISES_DIR = Path(__file__).resolve().parent
LESSONS_DIR = EXERCISES_DIR.parent


def stub_path(lesson: int) -> Path:
    return EXERCISES_DIR / f"lesson_{lesson}.py"


def answer_path(lesson: int) -> Path:
    """lessons/answers/lesson_N.py, or the same name under $SCRATCH_LM_ANSWERS_DIR."""
    folder = Path(os.environ.get(ANSWERS_ENV) or LESSONS_DIR / "answers")
    return folder / f"lesson_{lesson}.py"


def available_lessons() -> list[int]:
    """Lessons that have exercises (a stub file and its tests)."""
    found = []
    for path in EXERCISES_DIR.glob("lesson_*.py"):
        number = path.stem.removeprefix("lesson_")
        if number.isdigit() and (EXERCISES_DIR / "tests" / f"test_lesson_{number}.py").is_file():
            found.append(int(number))
    return sorted(found)


def exercise_names(lesson: int) -> list[str]:
    """The functions a student writes for `lesson`: the stub's `__all__`, read without importing it."""
    for node in ast.parse(stub_path(lesson).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ValueError(f"{stub_path(lesson)} has no __all__ listing its exercises")


def _load_file(path: Path, name: str) -> ModuleType:
    """Import a .py file by path (a fresh module object each call, so an edited answer is re-read)."""
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_implementation(lesson: int, which: str) -> SimpleNamespace:
    """The functions of `lesson` from "reference", "stub" or a .py file path, as attributes of a namespace.

    A file must define every name of the stub's `__all__`; a missing one raises AttributeError naming it.
    """
    names = exercise_names(lesson)
    if which == "reference":
        source = importlib.import_module("lessons.exercises.reference").reference(lesson)
    elif which == "stub":
        source = _load_file(stub_path(lesson), f"lesson_{lesson}_stub")
    else:
        source = _load_file(Path(which), f"lesson_{lesson}_answer")
    missing = [name for name in names if not hasattr(source, name)]
    if missing:
        raise AttributeError(f"{which} does not define {missing} for lesson {lesson}; start from a copy of "
                             f"{stub_path(lesson)} (`python -m lessons.grade {lesson} --init`)")
    return SimpleNamespace(**{name: getattr(source, name) for name in names})


def yours_or_reference(lesson: int, name: str):
    """Exercise `name` of `lesson` for a notebook cell to use: your answer in lessons/answers/lesson_N.py once you
    have written it, else the reference. Says once which one runs; if your function still raises the stub's
    NotImplementedError, the reference runs in its place (the grader, not this, tells you whether yours is right).
    """
    if name not in exercise_names(lesson):
        raise KeyError(f"lesson {lesson} has no exercise {name!r}; its exercises: {exercise_names(lesson)}")
    reference = getattr(load_implementation(lesson, "reference"), name)
    path = answer_path(lesson)
    shown = path.relative_to(LESSONS_DIR.parent) if path.is_relative_to(LESSONS_DIR.parent) else path
    yours = getattr(_load_file(path, f"lesson_{lesson}_answer"), name, None) if path.is_file() else None
    if yours is None:
        print(f"{name}: 用的是参考答案（{shown} 里还没有它；"
              f"`python -m lessons.grade {lesson} --init` 之后去写）")
        return reference
    announced = False

    def call(*args, **kwargs):
        nonlocal announced
        try:
            result, which = yours(*args, **kwargs), f"用的是你的答案（{shown}）"
        except NotImplementedError:
            result, which = reference(*args, **kwargs), "你的答案还没写（NotImplementedError），这里用参考答案"
        if not announced:
            print(f"{name}: {which}")
            announced = True
        return result

    return call
