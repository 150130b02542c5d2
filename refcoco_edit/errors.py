"""Exceptions of the toolkit.

Library code raises these; the CLIs turn them into one-line messages and a non-zero exit code, so a
user sees what is wrong without a traceback.
"""


class RefcocoEditError(Exception):
    """Base of every error the toolkit raises on purpose."""


class DataError(RefcocoEditError):
    """A data file is missing, malformed or inconsistent."""


class UnsafePickleError(DataError):
    """A pickle asked to import or call something; nothing it asked for was run."""


class ModelNotAvailableError(RefcocoEditError):
    """Weights for a model name are not available; the message names the setting to set."""


class InputError(RefcocoEditError):
    """Bad user input: an image, mask or prompt that cannot be used as given."""
