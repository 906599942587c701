"""One exception type for bad input: the CLI prints its message as a single line, no traceback."""


class SaescopeError(Exception):
    """A user-facing error. The message names the file or field, the problem and the fix, on one line."""


class NotFoundError(SaescopeError):
    """What was asked for is not there (a unit index out of range, a dataset without what a request needs); the
    viewer answers 404 with the message."""
