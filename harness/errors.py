"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: unknown name, out-of-range knob, missing path, corrupt file, unavailable backend."""

    exit_code = 2
