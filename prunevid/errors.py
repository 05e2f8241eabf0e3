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


def library_name(cls: type) -> type:
    """Names an error class as the library does (`prunevid.errors.VideoError`), however this package was imported.

    ComfyUI imports the node pack by its folder path, so the pack's copy of this module is
    `<path>/custom_nodes/prunevid-qwen25vl.prunevid.errors`, and ComfyUI's /history, its log and every traceback name
    an error by its class's `__module__` and `__qualname__`: the folder path would be part of every error's name.
    Only the name changes: the pack's classes stay its own (`except` and `isinstance` work as before); pickling one
    would look the name up in an installed `prunevid`, which nothing here does.
    """
    head, sep, tail = cls.__module__.rpartition(".prunevid.")
    if sep:
        cls.__module__ = "prunevid." + tail
    return cls


for _cls in (PruneVidError, ConfigError, VideoError, ModelError, BudgetError, InputError):
    library_name(_cls)
del _cls
