"""Errors caused by the user's input: the console scripts print them as one line, no traceback."""


class MtError(Exception):
    """Base class: a user mistake or an unusable input, explained in one line."""


class ConfigError(MtError):
    """A config key has a value that is not allowed; the message names the key."""


class DataError(MtError):
    """A corpus or input file is missing, unreadable or inconsistent; the message names the file."""


class CheckpointError(MtError):
    """A checkpoint cannot be read or is not one of ours; the message names the file."""


def require(condition: bool, key: str, value: object, allowed: str) -> None:
    """Stop on a bad config value, in the one message format every check shares.

    Raises:
        ConfigError: ``config key 'KEY' = VALUE: ALLOWED`` unless ``condition`` holds.
    """
    if not condition:
        raise ConfigError(f"config key '{key}' = {value!r}: {allowed}")
