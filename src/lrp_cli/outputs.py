"""Output files: naming, encoding, and all-or-nothing writes (temporary names, then rename)."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from lrp_cli import interrupts

SCHEMA = "lrp-cli/explanation/1"


def output_paths(out_dir: Path, stem: str, save_raw: bool) -> dict[str, Path]:
    """Returns the paths of one input's outputs: heatmap, overlay, json (and raw with --save-raw)."""
    paths = {
        "heatmap": out_dir / f"{stem}.heatmap.png",
        "overlay": out_dir / f"{stem}.overlay.png",
        "json": out_dir / f"{stem}.json",
    }
    if save_raw:
        paths["raw"] = out_dir / f"{stem}.relevance.npy"
    return paths


def png_bytes(rgb: np.ndarray | Image.Image, compress_level: int = -1) -> bytes:
    """Returns the PNG encoding of a uint8 [H, W, 3] image (or of a PIL image, e.g. an indexed one) at a zlib
    compression level (-1: zlib's default, as Pillow uses)."""
    buffer = io.BytesIO()
    (rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)).save(buffer, format="PNG",
                                                                         compress_level=compress_level)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """Returns the `.npy` encoding of an array."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def json_bytes(document: dict) -> bytes:
    """Returns the indented UTF-8 JSON encoding of a document, NaN and Inf written as null (valid JSON)."""
    return (json.dumps(finite(document), indent=2, allow_nan=False) + "\n").encode("utf-8")


def finite(value):
    """Returns a JSON-ready value with every NaN or Inf float (also inside dicts and lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_all(contents: dict[Path, bytes]) -> None:
    """Writes every file or none: each goes to a temporary name in its folder, then all are renamed (a stop
    signal waits until the set is done).

    Temporaries of these paths left by a killed earlier run (SIGKILL runs no cleanup) are removed first, unless
    a batch has swept their folder for all of its writes (swept_by_batch)."""
    remove_stale_temporaries([path for path in contents if not _in_swept_folder(path)])
    with interrupts.deferred():
        _write_renamed(contents)


def _write_renamed(contents: dict[Path, bytes]) -> None:
    temporary: list[tuple[str, Path]] = []
    try:
        for folder in {path.parent for path in contents}:
            folder.mkdir(parents=True, exist_ok=True)
        for path, data in contents.items():
            temporary.append((_write_temporary(path, data), path))
        for tmp, path in temporary:
            os.replace(tmp, path)
        temporary.clear()
    finally:
        for tmp, _ in temporary:  # after an error only: those not renamed yet
            if os.path.exists(tmp):
                os.unlink(tmp)


def _write_temporary(path: Path, data: bytes) -> str:
    """Returns the name of a new file .NAME.XXXXXXXX.tmp next to `path` holding `data`, made with the mode a plain
    open() gives (four system calls: open, write, close, rename later; mkstemp adds a chmod and more)."""
    while True:
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:  # another writer's temporary of the same name: draw another
            continue
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp


def remove_stale_temporaries(paths) -> None:
    """Removes the temporary files that write_all leaves behind for these paths when its process is killed."""
    for path in paths:
        if path.parent.is_dir():
            for stale in path.parent.glob(f".{glob.escape(path.name)}.????????.tmp"):  # mkstemp adds 8 chars
                stale.unlink(missing_ok=True)


#: The temporaries write_all's mkstemp makes for the kinds of file lrp writes (.NAME.XXXXXXXX.tmp): a folder
#: sweep leaves other programs' temporaries alone.
TEMPORARY_NAME = re.compile(r"\..+\.(json|png|npy|csv|html)\.\w{8}\.tmp")
_SWEPT: set[Path] = set()  # the folders (absolute) whose writes a batch swept for: see swept_by_batch


def remove_temporaries(folder: Path) -> None:
    """Removes every temporary that write_all left anywhere under `folder` (one walk of it)."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.rglob(".*.tmp"):
            if TEMPORARY_NAME.fullmatch(stale.name):
                stale.unlink(missing_ok=True)


def swept_by_batch(folder: Path) -> None:
    """Lets this process's later writes under `folder` skip their search for stale temporaries: the batch that
    writes there removed them once before its first write (and does again after its last), so that N files cost
    one walk of the folder instead of N. Called in each process (client or worker) that runs the batch's tasks."""
    _SWEPT.add(Path(os.path.abspath(folder)))


def unswept(folder: Path) -> None:
    """Makes this process's writes under `folder` search for stale temporaries again (a batch has ended)."""
    _SWEPT.discard(Path(os.path.abspath(folder)))


@contextmanager
def batch_writes(folder: Path | None):
    """Returns the context of a batch writing under `folder` (None: nothing to do): stale temporaries are removed
    once before (and once after: a worker killed mid-batch leaves its own), and this process's writes skip their
    own search meanwhile."""
    if folder is None:
        yield
        return
    remove_temporaries(folder)
    swept_by_batch(folder)
    try:
        yield
    finally:
        unswept(folder)
        remove_temporaries(folder)


def _in_swept_folder(path: Path) -> bool:
    return bool(_SWEPT) and not _SWEPT.isdisjoint(Path(os.path.abspath(path)).parents)


def sha256_file(path: Path) -> str:
    """Returns the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
