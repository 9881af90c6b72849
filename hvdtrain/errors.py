"""Errors a user can fix. The CLI edge turns them into a message and an exit code, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file/key/line and the fix. Exit code 2, nothing launched."""

    exit_code = 2
    SHOWN = 20  # problems shown on screen; the rest are counted (--json keeps every one)

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def lines(self) -> list[str]:
        """The message, then each problem (for ``--json`` output)."""
        return [str(self), *self.problems]

    def render(self) -> str:
        shown = self.problems[:self.SHOWN]
        more = len(self.problems) - len(shown)
        return "\n".join([str(self), *(f"  {p}" for p in shown),
                          *([f"  ... and {more} more like these"] if more > 0 else [])])
