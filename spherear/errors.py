"""The errors a user can fix. The CLI prints their message as one line and exits with 2."""


class SpherearError(ValueError):
    """Bad input: the message names the problem and the fix, in one line."""


class Stopped(SpherearError):
    """A run that stopped on a signal (Ctrl-C, SIGTERM, SIGUSR1) after saving its state; the
    message says where and how to resume. The CLI exits with 128 + the signal's number."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number
