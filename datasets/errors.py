"""The one error type for bad input: a file (or config key) and what is wrong with it."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input. ``str(err)`` is one line: ``<where>: <problem>``."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
