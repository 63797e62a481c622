"""The one error the command line raises itself, and the exit status of refused credentials."""


class UsageError(Exception):
    """The command line asks for something that cannot be done; the message says why."""


#: the exit status of refused credentials: the unit file's RestartPreventExitStatus lists it, since a
#: restart with the same settings logs in again with them (2: a bad option or setting; 1: the rest)
EXIT_CREDENTIALS_REFUSED = 3
