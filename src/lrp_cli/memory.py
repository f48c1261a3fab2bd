"""Peak memory: hand the heap pages that Python and NumPy freed back to the operating system."""

from __future__ import annotations

import ctypes


def release_freed_memory() -> bool:
    """Returns True when the C library returned the freed heap pages to the OS (glibc's malloc_trim), else False.

    Loading a model leaves most of the importer's temporary arrays as freed but still resident heap pages
    (glibc keeps them for reuse): 150 MB of a ResNet-50's 430 MB after the import. Without this the compiled
    session and its run add to them instead of reusing them, and the peak rises by as much."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to hand back this way
        return False
