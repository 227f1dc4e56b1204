from ..core.errors import TrajshiftError


class DataError(TrajshiftError, OSError):
    """A data file is missing, unreadable, of the wrong format or inconsistent; the message names the file."""
