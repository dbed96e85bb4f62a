"""The errors mixens reports in one sentence: bad input, and outputs it could not write."""


class ConfigError(ValueError):
    """Bad user input; the message names the field and the fix."""


class OutputError(OSError):
    """Results could not be written (a full or read-only disk); the message says what was kept."""
