"""What a query is: clip ids, a ``.npy`` file of feature rows, or a media file.

:class:`avret.index.searcher.Searcher` answers them; this module only reads and checks the query
itself (nothing is ever unpickled, every bad query is one :class:`QueryError` line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avret.errors import AvretError, QueryError

MEDIA_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".mp4", ".mkv", ".webm", ".avi", ".mov"}


def parse_clip_ids(query: str) -> list[str]:
    """Comma-separated clip ids (at least one, surrounding spaces ignored)."""
    ids = [q.strip() for q in str(query).split(",") if q.strip()]
    if not ids:
        raise QueryError(f"query {query!r}: expected a clip id (or several, comma-separated), a .npy file or media")
    return ids


def load_query_array(path: Path) -> np.ndarray:
    """Query feature rows from a ``.npy`` file: a real-valued ``(D,)`` or ``(n, D)`` array, n >= 1.

    Anything else — pickled objects, strings, complex numbers, a 0-d or 3-d array, no rows, a file
    that is not ``.npy`` at all — is a one-line :class:`QueryError`; nothing is ever unpickled.
    """
    from avret.utils.arrays import check_npy_file
    from avret.utils.csvfile import require_regular_file

    try:
        require_regular_file(path, "a .npy array of float rows (n, D)")
    except AvretError as exc:
        raise QueryError(str(exc)) from None
    check_npy_file(path, QueryError)  # a forged header: refused before any allocation
    try:
        feats = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = ("holds pickled objects" if "Object arrays" in str(exc)
                  else "not a .npy file, or pickled data" if "pickle" in str(exc) else "unreadable or empty")
        raise QueryError(f"{path}: not a numeric .npy array ({reason}); expected float rows (n, D)") from None
    if not isinstance(feats, np.ndarray):
        raise QueryError(f"{path}: not a single .npy array; expected float rows (n, D)")
    if not (np.issubdtype(feats.dtype, np.floating) or np.issubdtype(feats.dtype, np.integer)):
        raise QueryError(f"{path}: dtype {feats.dtype}; expected real numbers (float rows (n, D))")
    if feats.ndim not in (1, 2):
        raise QueryError(f"{path}: shape {feats.shape}; expected (D,) or (n, D)")
    feats = feats[None, :] if feats.ndim == 1 else feats
    if len(feats) == 0:
        raise QueryError(f"{path}: shape {feats.shape} holds no query rows; expected at least one")
    return feats.astype(np.float32)
