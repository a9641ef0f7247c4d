"""The one exception type the CLI turns into a one-line error instead of a traceback."""


class VaekitError(Exception):
    """A problem the user can fix: bad input, a missing file, a missing runtime."""

    exit_code = 1


class UsageError(VaekitError):
    """The command line itself is wrong (unknown option value, conflicting flags)."""

    exit_code = 2
