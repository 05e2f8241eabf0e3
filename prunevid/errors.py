"""Errors a user can act on. Every message names the input that is wrong and what to do about it."""


class PruneVidError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(PruneVidError, ValueError):
    """A parameter is out of its valid range (the message names the field and the range)."""


class VideoError(PruneVidError):
    """A video or image cannot be read: missing, corrupt, no frames."""


class ModelError(PruneVidError):
    """A model folder or hub id is not a loadable checkpoint of a supported family."""


class BudgetError(PruneVidError):
    """The input would make more visual tokens than the configured budget allows."""


class InputError(PruneVidError, ValueError):
    """A question or prompt is unusable (empty, too long)."""
