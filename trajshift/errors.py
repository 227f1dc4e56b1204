"""The library's own error types: every error a user can cause is one of these, with a message that names the
culprit and says what to do."""


class TrajshiftError(Exception):
    """Base class of every error trajshift raises on purpose."""


class ConfigError(TrajshiftError, ValueError):
    """A configuration value (file key or command-line flag) is unknown, of the wrong type or out of range."""


class DivergenceError(TrajshiftError, FloatingPointError):
    """A loss or parameter became NaN or infinite during training."""


class Interrupted(TrajshiftError):
    """The user stopped a run (Ctrl-C or SIGTERM); the message says how to resume."""
