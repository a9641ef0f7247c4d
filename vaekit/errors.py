"""The one exception type the CLI turns into a one-line error instead of a traceback."""


class VaekitError(Exception):
    """A problem the user can fix: bad input, a missing file, a missing runtime."""

    exit_code = 1


class UsageError(VaekitError):
    """The command line itself is wrong (unknown option value, conflicting flags)."""

    exit_code = 2


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a Ctrl-C is anywhere in the exception's cause or context chain: libraries such as
    torch.onnx.export wrap whatever they meet in an error of their own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
