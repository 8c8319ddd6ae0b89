"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: unknown name, out-of-range knob, missing path, corrupt file, unavailable backend."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, cut to ``limit`` characters: what a
    one-line error or a result row's ``error`` column can hold."""
    return (str(exc).strip().splitlines() or [""])[0][:limit]
