"""Errors a user can act on. The CLI prints them as one line (no traceback); anything else is a bug."""


class EmbedforgeError(Exception):
    """Base class: the message names the file/field at fault and what to do."""


class ConfigError(EmbedforgeError):
    """Invalid configuration value or file."""


class InputError(EmbedforgeError):
    """Bad user input: missing/empty corpus, unreadable file, malformed pairs line, ..."""


class ValidationFailed(EmbedforgeError):
    """A data-quality expectation failed (see the saved validation result)."""


class ParityError(EmbedforgeError):
    """Exported model does not reproduce the PyTorch embeddings."""


class ServingError(EmbedforgeError):
    """The inference server did not load, or did not correctly serve, the promoted version."""
