"""Reference solutions of the exercises that have no function of the same shape in the package.

Written from the formulas in plain PyTorch, independently of the package (they import nothing from it), so
they are also "a correct answer written by someone else" for the grader's tests. `python -m lessons.grade N
--solution N.M` prints one of them after you have tried the exercise.
"""
