"""Errors a user can fix, shown as one line by the CLI."""


class UserError(ValueError):
    """Bad input: the message names the problem (file, field, value, expected)."""
