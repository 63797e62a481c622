"""The one error the command line raises itself."""


class UsageError(Exception):
    """The command line asks for something that cannot be done; the message says why."""
