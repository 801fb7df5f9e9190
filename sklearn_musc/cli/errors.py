"""The command line's errors, one type per exit status; :func:`~sklearn_musc.cli.command.main` maps them."""

import contextlib

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "InputError", "RunFailed",
           "WeightsUnavailable", "one_line", "running"]

EXIT_OK, EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 2, 3, 130


class InputError(Exception):
    """Bad usage or input (options, folders, images, the model file): exit status 2."""


class WeightsUnavailable(Exception):
    """Pretrained weights that cannot be downloaded (offline, nothing cached): exit status 3."""


class RunFailed(Exception):
    """An error raised while computing, after every check passed: exit status 3.

    The error itself is ``__cause__``.
    """


@contextlib.contextmanager
def running():
    """From here on, a library error is a failure of the run (exit 3), not bad input (exit 2)."""
    try:
        yield
    except (InputError, WeightsUnavailable, MemoryError, RunFailed):
        raise
    except Exception as exc:
        raise RunFailed(str(exc)) from exc


def one_line(exc):
    """The first line of an error's message (its type's name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
