"""Read PyTorch state-dict checkpoints into NumPy arrays without importing torch.

A ``torch.save`` file is a pickle, and unpickling runs whatever callables the file names.
We therefore use a restricted unpickler: it admits only the handful of globals a plain
state dict refers to, maps each to a small stand-in written here, and refuses the rest.

Two layouts exist:

* legacy (``_use_new_zipfile_serialization=False``, torch < 1.6 default): pickles of the
  magic number, protocol version and sys_info, then the main pickle (tensors refer to
  storages by persistent id), then a pickled list of storage keys, then for each key an
  int64 element count followed by the raw little-endian storage bytes;
* zip (torch >= 1.6 default): ``<prefix>/data.pkl`` plus one raw file ``<prefix>/data/<key>``
  per storage.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lrp_cli.errors import ModelLoadError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage class name -> NumPy dtype. BFloat16 has no NumPy dtype; it is widened below.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ModelLoadError, ValueError):
    """A checkpoint that cannot be read safely or correctly (one-line message; CLI exit code 3)."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only the element type matters."""

    # slots: without a __dict__, a pickle's BUILD opcode cannot rewrite the shared instances.

    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass
class _TensorRef:
    """A tensor as the pickle describes it; turned into an array once storages are read."""

    storage_key: str
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass
class _StorageRef:
    """A storage named by a persistent id: key, element type, element count, optional view."""

    key: str
    stype: _StorageType
    numel: int
    view_offset: int = 0


def _rebuild_tensor(storage: _StorageRef, storage_offset, size, stride, *_ignored) -> _TensorRef:
    """Return a _TensorRef; stands in for torch._utils._rebuild_tensor(_v2)."""
    offset = storage.view_offset + int(storage_offset)
    return _TensorRef(storage.key, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_ignored) -> _TensorRef:
    """Return the wrapped tensor; a Parameter is just a tensor once gradients are dropped."""
    return data


def _ordered_dict(*args):
    """Return a new OrderedDict (the one container class a state dict is pickled as)."""
    return collections.OrderedDict(*args)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only state-dict globals and storage persistent ids."""

    def __init__(self, file: BinaryIO, source: Path):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Return our stand-in for an allowed global; refuse every other global."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.source}: refused to unpickle global '{module}.{name}' "
                "(not part of a plain state dict)"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        """Return the _StorageRef a tensor's ('storage', type, key, location, numel[, view]) id names."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.source}: unsupported persistent id {pid!r:.80}")
        stype, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"{self.source}: storage {key} has no known element type")
        self.storages.setdefault(key, _StorageRef(key, stype, numel))
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return self.storages[key]
        # Pre-1.0 checkpoints could share one storage between views: (view_key, offset, size).
        return _StorageRef(key, stype, int(view[2]), view_offset=int(view[1]))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the checkpoint's tensors as {name: contiguous numpy array}, read without torch."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            return _load_legacy(f, path)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means a malformed file
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: malformed checkpoint ({type(exc).__name__}: {detail:.120})") from None


def _load_legacy(f: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    """Return the tensors of a legacy (pickle stream) checkpoint open in f."""
    header = [_RestrictedUnpickler(f, path).load() for _ in range(3)]
    magic, protocol, sys_info = header
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number or protocol)")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
    unpickler = _RestrictedUnpickler(f, path)
    obj = unpickler.load()
    keys = _RestrictedUnpickler(f, path).load()
    buffers = {str(k): _read_legacy_storage(f, unpickler.storages[str(k)], path) for k in keys}
    return _materialize(obj, unpickler.storages, buffers, path)


def _read_legacy_storage(f: BinaryIO, ref: _StorageRef, path: Path) -> np.ndarray:
    """Return one storage's elements: an int64 element count, then the raw bytes."""
    (count,) = struct.unpack("<q", f.read(8))
    data = f.read(count * ref.stype.dtype.itemsize)
    if count != ref.numel or len(data) != count * ref.stype.dtype.itemsize:
        raise CheckpointError(f"{path}: storage {ref.key} is truncated or inconsistent")
    return np.frombuffer(data, dtype=ref.stype.dtype)


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    """Return the tensors of a zip-format checkpoint (data.pkl + data/<key> files)."""
    with zipfile.ZipFile(path) as zf:
        pkl_names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl_names) != 1:
            raise CheckpointError(f"{path}: zip file has no single data.pkl (not a torch checkpoint)")
        prefix = pkl_names[0][: -len("data.pkl")]
        if zf.NameToInfo.get(f"{prefix}byteorder") and zf.read(f"{prefix}byteorder") != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pkl_names[0])), path)
        obj = unpickler.load()
        buffers = {
            key: np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=ref.stype.dtype)
            for key, ref in unpickler.storages.items()
        }
    return _materialize(obj, unpickler.storages, buffers, path)


def _materialize(obj: Any, storages: dict, buffers: dict, path: Path) -> dict[str, np.ndarray]:
    """Return {name: array} for a loaded mapping of names to _TensorRefs."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}, not a state dict")
    out = {}
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
        out[str(name)] = _tensor_to_array(value, storages[value.storage_key], buffers, path)
    return out


def _tensor_to_array(t: _TensorRef, ref: _StorageRef, buffers: dict, path: Path) -> np.ndarray:
    """Return a contiguous copy of the strided view t describes over its storage."""
    flat = buffers[t.storage_key]
    extent = t.storage_offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)) + 1
    if any(n == 0 for n in t.size):
        return np.zeros(t.size, dtype=_out_dtype(ref))
    if t.storage_offset < 0 or min(t.stride, default=0) < 0 or extent > flat.size:
        raise CheckpointError(f"{path}: tensor view exceeds storage {t.storage_key}")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.storage_offset :], shape=t.size, strides=[s * item for s in t.stride], writeable=False
    )
    # np.array, not ascontiguousarray: the latter turns 0-d tensors (num_batches_tracked) into 1-d.
    return _widen_bfloat16(np.array(view, order="C"), ref)


def _out_dtype(ref: _StorageRef) -> np.dtype:
    """Return the NumPy dtype an array of this storage type is returned as."""
    return np.dtype(np.float32) if ref.stype.name == "BFloat16Storage" else ref.stype.dtype


def _widen_bfloat16(arr: np.ndarray, ref: _StorageRef) -> np.ndarray:
    """Return arr, with bfloat16 bit patterns (read as uint16) widened to float32."""
    if ref.stype.name != "BFloat16Storage":
        return arr
    # bfloat16 is the upper half of a float32, so shifting the bits up is exact.
    return (arr.astype(np.uint32) << 16).view(np.float32)
