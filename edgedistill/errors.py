"""The one error family of edgedistill.

Library code raises these; the CLI turns them into a one-line message and an exit code. A message names the
value, the constraint it broke and the fix, so the user never needs the traceback.
"""


class EdgeDistillError(Exception):
    """Base class. `exit_code` is what the CLI exits with (2: the user's input or environment is wrong)."""

    exit_code = 2


class ModelNotFoundError(EdgeDistillError):
    """A model name, path or hub id that does not resolve to a model."""


class InvalidModelError(EdgeDistillError):
    """A file or directory that exists but is not a usable model (corrupt GGUF, no config.json, ...)."""


class OfflineError(EdgeDistillError):
    """Something needs a network this machine does not have."""


class IntegrityError(EdgeDistillError):
    """A file whose checksum does not match the value pinned for it."""


class CacheError(EdgeDistillError):
    """The cache folder cannot be used (not writable, not a directory, ...)."""


class DiskFullError(CacheError):
    """A write failed for want of space (a full disk, a quota, a file-size limit); the output was not written."""


class UnsupportedError(EdgeDistillError):
    """A model, format or scheme combination this tool does not implement (it never silently falls back)."""


class ValidationError(EdgeDistillError):
    """An exported or quantized artifact whose measured gap to the reference exceeds its tolerance."""

    exit_code = 1
