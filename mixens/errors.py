"""The one error type for bad user input."""


class ConfigError(ValueError):
    """Bad user input; the message names the field and the fix."""
