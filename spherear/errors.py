"""The errors a user can fix. The CLI prints their message as one line and exits with 2."""


class SpherearError(ValueError):
    """Bad input: the message names the problem and the fix, in one line."""
