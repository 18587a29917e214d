"""Errors caused by the user's input. Entry points print them as one line and exit with code 2.

Anything else that goes wrong is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the bad key, path or value."""


class ConfigError(UserError):
    """A config key, value or combination of values is invalid."""


class DataError(UserError):
    """A data source, dataset directory or tokenizer is missing, unreadable or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint path is missing or does not hold a valid checkpoint."""


class SourceError(DataError):
    """A data source (a file, directory, glob, `hf:` or `builtin:` spec, or a line in one) is missing or bad."""
