"""Exceptions a task raises on purpose; their messages are shown to the task's owner."""


class JobError(Exception):
    """A failure the owner may read about (bad input, unreachable source). Anything else is
    reported as an internal error, with the details only in the worker's log."""


class Cancelled(Exception):
    """The owner cancelled the task; raised at the task's next checkpoint."""
