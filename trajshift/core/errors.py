"""The library's own error types: every error a user can cause is one of these, with a message that names the
culprit and says what to do."""


class TrajshiftError(Exception):
    """Base class of every error trajshift raises on purpose."""


class ConfigError(TrajshiftError, ValueError):
    """A configuration value (file key or command-line flag) is unknown, of the wrong type or out of range."""


class DivergenceError(TrajshiftError, FloatingPointError):
    """A loss or parameter became NaN or infinite during training."""


class Interrupted(KeyboardInterrupt):
    """The user stopped a run (Ctrl-C or SIGTERM); the message says how to resume. A KeyboardInterrupt, so
    ``except KeyboardInterrupt`` in a user's script catches it (and ``except Exception`` does not swallow it), as
    PyTorch users expect of Ctrl-C; exported as ``trajshift.Interrupted``."""


def unsafe_or_unreadable(path, err: Exception) -> str:
    """Our one-line reason for a file torch.load(weights_only=True) refused. torch's own message advises
    weights_only=False, which would run the file's code: never repeat that advice."""
    import re
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        return (f"{path}: refused ({found.group(1)} inside): the file holds Python objects, not only tensors, and loading it would run code "
                f"from it; trajshift loads weights only (a state_dict saved with torch.save(model.state_dict(), ...))")
    return f"{path}: not a readable state_dict file ({type(err).__name__}); is it a torch.save file?"
