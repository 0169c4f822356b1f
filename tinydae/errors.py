"""The few errors tinydae raises on purpose.  Each message says what is wrong and how to fix it.

The CLI prints ``str(error)`` as one line on stderr and exits with ``error.exit_code``.
"""


class TinyDAEError(Exception):
    """Base class: a problem the user can fix (bad input, missing backend, bad file)."""

    exit_code = 2


class ConfigError(TinyDAEError, ValueError):
    """A bad option or argument: unknown activation, negative learning rate, ..."""


class DataError(TinyDAEError, ValueError):
    """Data that cannot be used: wrong format, wrong shape, values outside [0, 1]."""


class CheckpointError(TinyDAEError):
    """A checkpoint that cannot be read or does not fit: truncated, foreign, wrong version."""


class WriteError(TinyDAEError, OSError):
    """A file could not be written (a full disk, a quota, a read-only file system, a name too
    long ...): the message names the path, the bytes it needed and that the previous file, if
    any, is intact."""


class BackendUnavailable(TinyDAEError, RuntimeError):
    """The requested backend cannot run here; the message names what is missing."""


class TrainingDiverged(TinyDAEError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""

    exit_code = 3

    def __init__(self, message, step):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(TinyDAEError, KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during training; a checkpoint was saved first.

    exit_code follows the shell convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM.
    """

    exit_code = 130

    def __init__(self, message, step, checkpoint, signum=2):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
        self.signum = signum
        self.exit_code = 128 + signum
