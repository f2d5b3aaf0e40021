"""One error type for the launcher: what went wrong and how to fix it, printed as one message."""

from __future__ import annotations


class StackError(Exception):
    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}\n  fix: {self.fix}" if self.fix else self.problem
