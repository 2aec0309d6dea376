"""Typed errors. The API maps ``status_code`` to the HTTP status; the UI shows ``str(error)``.

Status choices:
- ``BadRequest`` 400: the request as a whole cannot be served (malformed, contradictory).
- ``InvalidField`` 422: one named field has a value outside what is allowed (as pydantic reports).
- ``NotFound`` 404: a named thing (model, sampler, script, file, job) does not exist.
- ``ModelLoadError`` 422: the request named an existing model, but its file cannot be loaded
  (corrupt or truncated file, unknown architecture): the client must pick another model.
- ``UnsafeCheckpoint`` 422: the named checkpoint is refused as content (a pickle that could run code);
  convert it to .safetensors or start with the flag that allows unsafe pickles.
- ``Interrupted`` 409: the job was interrupted (by the user) before it produced a result.
- ``OutOfMemory`` 503: the device (or RAM) ran out of memory for this job; the worker freed what it could and
  serves the next job. The message says what to lower.
"""

from __future__ import annotations


class StudioError(Exception):
    """Base of the studio's errors: a message, an HTTP status and optionally the field at fault."""

    status_code: int = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, object]:
        """JSON body shaped like A1111's API errors (error, detail, body, errors) plus ``field``."""
        return {"error": type(self).__name__, "detail": self.message, "body": "", "errors": self.message,
                "field": self.field}


class BadRequest(StudioError):
    """The request cannot be served as given."""

    status_code = 400


class InvalidField(StudioError):
    """One field's value is not allowed; the message names the field and what is allowed."""

    status_code = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)


class NotFound(StudioError):
    """A named model, sampler, script, file or job does not exist."""

    status_code = 404


class ModelLoadError(StudioError):
    """A model exists but could not be loaded (corrupt, unsupported, out of memory)."""

    status_code = 422


class UnsafeCheckpoint(ModelLoadError):
    """A pickle checkpoint refused because loading it could execute code."""

    status_code = 422


class Interrupted(StudioError):
    """The job was interrupted before it produced a result."""

    status_code = 409


class NotAvailable(StudioError):
    """A feature of A1111's that this studio cannot offer (its model weights cannot be had offline)."""

    status_code = 501


class OutOfMemory(StudioError):
    """The job needed more memory than the device (or RAM) had; the next job runs as usual."""

    status_code = 503
