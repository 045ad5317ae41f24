"""The one exception the CLI turns into a single line and exit code 2."""


class ConfigError(Exception):
    """Bad user input: the message says what was wrong, what is accepted and how to fix it."""
