"""The one error type for bad input: a file (or config key) and what is wrong with it."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input. ``str(err)`` is one line: ``<where>: <problem>``."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


def one_line(text: str, fallback: str = "error") -> str:
    """The first paragraph of a library's message as one line (its line breaks are layout, not sentence
    ends), without OmegaConf's and Hydra's ``full_key: ...`` trailer; ``fallback`` when it is empty."""
    paragraph = text.strip().split("\n\n")[0].split("full_key:")[0]
    return " ".join(paragraph.split()) or fallback
