"""User-facing errors.

Every problem a user can cause (a missing file, a malformed h5, features of the wrong width, an
index built by another model, ...) is raised as an :class:`AvretError` whose message is one line
naming the file or field and what was expected. The CLI prints that line and exits with code 2;
library users catch the exception.
"""

from __future__ import annotations


class AvretError(Exception):
    """A problem with the user's input, reported as one clear line (CLI exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class DataError(AvretError):
    """A data set or feature file is missing, malformed or inconsistent."""


class ModelError(AvretError):
    """A model directory or checkpoint is missing, malformed or incompatible."""


class IndexError_(AvretError):
    """An index directory is missing, malformed, or does not fit the model or query."""


class QueryError(AvretError):
    """A search query is invalid (unknown clip id, k too large, wrong feature width)."""


class UnknownClipError(QueryError):
    """A queried clip id is not in the index (HTTP 404 in ``avret serve``)."""
