"""The client's errors: each carries a message the user can act on (`prunevid submit` prints it, no stack trace)."""
from __future__ import annotations


class ComfyError(Exception):
    """A failure with a message the user can act on (no stack trace is shown for it)."""


class ServerUnreachable(ComfyError):
    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class ConnectionLost(ComfyError):
    pass


class RunTimeout(ComfyError):
    pass


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what happened to the prompt on the server."""
