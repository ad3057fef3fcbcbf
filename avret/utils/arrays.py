"""Array files checked *before* anything is allocated: what a header claims must fit what the file holds.

A forged ``.npy`` header (1e9 rows in a 200-byte file, an absurd width), an ``.npz`` member whose
header claims more than the member's size, or an HDF5 dataset declared far larger than this machine's
memory (a huge chunked dataset with no data written) is refused in one line, naming the file, before
NumPy or h5py try to allocate it.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from avret.errors import AvretError, DataError


def memory_bytes() -> int:
    """Physical memory of this machine (bytes), or 64 GiB when unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def max_array_bytes() -> int:
    """The largest array a file may ask to be loaded: half of this machine's memory."""
    return memory_bytes() // 2


def _header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the ``.npy`` stream ``fh`` (positioned at its start)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=1 << 20)
    elif version in ((2, 0), (3, 0)):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=1 << 20)
    else:
        raise ValueError(f"unknown .npy version {version}")
    return tuple(int(n) for n in shape), np.dtype(dtype), fh.tell()


def _check(shape: tuple[int, ...], dtype: np.dtype, available: int, where: str,
           error: type[AvretError]) -> None:
    if dtype.hasobject:
        raise error(f"{where}: holds pickled objects (dtype {dtype}); expected a numeric array")
    if any(n < 0 for n in shape):
        raise error(f"{where}: header claims shape {shape}; expected a numeric array")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > available:
        raise error(f"{where}: header claims shape {shape} ({nbytes} bytes of {dtype}) but the file holds "
                    f"{max(available, 0)} bytes of data (forged or truncated); expected a complete .npy array")
    if nbytes > max_array_bytes():
        raise error(f"{where}: header claims {nbytes / 2**30:.1f} GiB, more than half of this machine's memory")


def check_npy_file(path: str | os.PathLike[str], error: type[AvretError] = DataError) -> None:
    """Refuse a ``.npy`` file whose header claims more data than the file holds (before loading it).

    A file that is not ``.npy`` at all passes (the loader reports it in its own words).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            shape, dtype, start = _header(fh)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return
    _check(shape, dtype, size - start, str(path), error)


def check_npz_file(path: str | os.PathLike[str], error: type[AvretError] = DataError) -> None:
    """The same check for every member of an ``.npz`` archive (its stated uncompressed size)."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with archive.open(info) as fh:
                    shape, dtype, start = _header(fh)
            except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile, RuntimeError):
                continue
            _check(shape, dtype, info.file_size - start, f"{path}: member '{info.filename[:-4]}'", error)


def check_h5_dataset(entry: Any, where: str, error: type[AvretError] = DataError) -> None:
    """Refuse an HDF5 dataset declared larger than half of this machine's memory (before reading it)."""
    try:
        shape = tuple(int(n) for n in entry.shape or ())
        itemsize = int(entry.dtype.itemsize)
    except (TypeError, ValueError, AttributeError):
        return
    nbytes = math.prod(shape) * itemsize
    if nbytes > max_array_bytes():
        raise error(f"{where}: dataset of shape {shape} is {nbytes / 2**30:.1f} GiB, more than half of this "
                    "machine's memory; expected a data set that fits")
