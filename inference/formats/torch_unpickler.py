"""Read PyTorch `torch.save` files without PyTorch and without running their pickle code.

A .pth is a pickle, and unpickling can call any importable function, so a hostile file
could run `os.system`. `SafeUnpickler.find_class` therefore resolves only an allow-list
(torch's tensor rebuild functions, its storage type names and OrderedDict) to harmless
local stand-ins, and refuses every other global with a `ModelFormatError` before anything
is called. Tensors come back as `TorchTensor` records pointing into memory-mapped storage
bytes, so nothing is copied until a caller asks for the values.

Two container layouts exist:
  zip (torch >= 1.6): `<root>/data.pkl` plus one stored (uncompressed) entry
      `<root>/data/<key>` per storage;
  legacy: consecutive pickles (magic number, protocol version, sys info, the object,
      the sorted storage keys), then per storage an int64 element count and its bytes.
"""
from __future__ import annotations

import collections
import mmap
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelFormatError
from .common import Raw, map_file

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class StorageType:
    """Stand-in for a class like `torch.FloatStorage`: just its element type."""

    name: str
    np_dtype: str
    kind: str

    @property
    def itemsize(self) -> int:
        return np.dtype(self.np_dtype).itemsize


_STORAGE_TYPES = {
    "FloatStorage": ("<f4", "fp32"), "HalfStorage": ("<f2", "fp16"),
    "BFloat16Storage": ("<u2", "bf16"), "DoubleStorage": ("<f8", "fp64"),
    "LongStorage": ("<i8", "int64"), "IntStorage": ("<i4", "int32"),
    "ShortStorage": ("<i2", "int16"), "CharStorage": ("i1", "int8"),
    "ByteStorage": ("u1", "uint8"), "BoolStorage": ("?", "bool"),
}


class Storage:
    """The bytes of one torch storage; filled in late for the legacy layout."""

    def __setstate__(self, state: Any) -> None:
        raise ModelFormatError("checkpoint tries to set state on a storage; refusing it")

    def __init__(self, stype: StorageType, key: str) -> None:
        self.stype = stype
        self.key = key
        self.data: np.ndarray | None = None   # 1-D, element type of stype

    def attach(self, raw: np.ndarray) -> None:
        if raw.size % self.stype.itemsize:
            raise ModelFormatError(f"storage {self.key} size is not a multiple of its element size")
        self.data = raw.view(self.stype.np_dtype)


class TorchTensor:
    """A strided view description into a `Storage` (what torch's rebuild would make)."""

    def __init__(self, storage: Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __setstate__(self, state: Any) -> None:
        raise ModelFormatError("checkpoint tries to set state on a tensor; refusing it")

    @property
    def kind(self) -> str:
        return self.storage.stype.kind

    def same_data(self, other: "TorchTensor") -> bool:
        """True when both describe the very same elements (a tied classifier)."""
        return (self.storage is other.storage and self.offset == other.offset
                and self.shape == other.shape and self.stride == other.stride)

    def check(self) -> None:
        """Refuse a view that reaches outside its storage."""
        data = self.storage.data
        if not isinstance(data, np.ndarray):
            raise ModelFormatError(f"checkpoint has no data for storage {self.storage.key}")
        if any(n == 0 for n in self.shape):
            return
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if last >= data.size:
            raise ModelFormatError(
                f"a tensor of shape {self.shape} reaches past the end of storage {self.storage.key} "
                f"(file truncated or corrupt)")

    def raw(self) -> Raw:
        """Zero-copy numpy view of the tensor's elements."""
        self.check()
        data = self.storage.data
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.shape, strides=tuple(s * item for s in self.stride),
            writeable=False)
        return Raw(view, self.kind)


# -- the allow-list's stand-ins -------------------------------------------------------
def _int_tuple(x: Any, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(isinstance(i, int) and i >= 0 for i in x):
        raise ModelFormatError(f"checkpoint has a malformed tensor {what}: {x!r:.60}")
    return tuple(x)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> TorchTensor:
    """Stand-in for torch._utils._rebuild_tensor(_v2): records the view, runs nothing."""
    if not isinstance(storage, Storage) or not isinstance(storage_offset, int) or storage_offset < 0:
        raise ModelFormatError("checkpoint rebuilds a tensor from something that is not a storage")
    shape, strides = _int_tuple(size, "shape"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise ModelFormatError("checkpoint has a tensor whose shape and stride disagree")
    return TorchTensor(storage, storage_offset, shape, strides)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *rest: Any) -> Any:
    """Stand-in for torch._utils._rebuild_parameter(_with_state): a parameter is its tensor."""
    if not isinstance(data, TorchTensor):
        raise ModelFormatError("checkpoint wraps a non-tensor in a Parameter")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_ALLOWED.update({("torch", n): StorageType(n, d, k) for n, (d, k) in _STORAGE_TYPES.items()})


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that knows only torch's tensor vocabulary; storages come from `resolve`."""

    def __init__(self, file: Any, resolve: Any = None) -> None:
        super().__init__(file)
        self._resolve = resolve

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise ModelFormatError(
                f"refusing to load: the checkpoint's pickle asks for {module}.{name}, which is not "
                f"a tensor type (it may run code); only plain PyTorch weight files are accepted") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._resolve is None or not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise ModelFormatError(f"checkpoint has an unexpected persistent id {pid!r:.60}")
        stype, key = pid[1], pid[2]
        if not isinstance(stype, StorageType) or not isinstance(key, (str, int)):
            raise ModelFormatError("checkpoint names a storage of an unknown type")
        view = pid[5] if len(pid) > 5 else None
        return self._resolve(stype, str(key), view)


# -- containers ---------------------------------------------------------------------------
_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
           AttributeError, OverflowError, struct.error, zipfile.BadZipFile, RecursionError,
           MemoryError, UnicodeDecodeError)


def load_torch_file(path: str) -> dict[str, TorchTensor]:
    """Tensors of a `torch.save`d state dict, by name (memory-mapped, nothing executed)."""
    mm = map_file(path)
    try:
        obj = _load_zip(path, mm) if mm[:4] == b"PK\x03\x04" else _load_legacy(path, mm)
        return _state_dict(path, obj)
    except ModelFormatError:
        raise
    except zipfile.BadZipFile:
        raise ModelFormatError(f"{path} is truncated or corrupt (its zip directory is unreadable)") from None
    except _ERRORS as e:
        raise ModelFormatError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else 'truncated?'})") from None


def _state_dict(path: str, obj: Any) -> dict[str, TorchTensor]:
    """The name -> tensor mapping inside what was unpickled (plain dict methods only, so
    attributes a hostile BUILD may have set on the dict are never called)."""
    if isinstance(obj, dict) and isinstance(dict.get(obj, "model"), dict):
        obj = dict.get(obj, "model")   # a training checkpoint that wraps the state dict
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    tensors = {str(k): v for k, v in dict.items(obj) if type(v) is TorchTensor}
    for t in tensors.values():
        t.check()
    return tensors


def _zip_entry(path: str, mm: mmap.mmap, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """Bytes of one zip member: a view into the map when stored, else read into memory."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return np.frombuffer(zf.read(name), np.uint8)
    off = info.header_offset
    if mm[off:off + 4] != b"PK\x03\x04":
        raise ModelFormatError(f"{path}: corrupt zip entry {name}")
    n_name, n_extra = struct.unpack_from("<HH", mm, off + 26)
    start = off + 30 + n_name + n_extra
    if start + info.file_size > len(mm):
        raise ModelFormatError(f"{path} is truncated (entry {name} runs past the end)")
    return np.frombuffer(mm, np.uint8, count=info.file_size, offset=start)


def _load_zip(path: str, mm: mmap.mmap) -> Any:
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise ModelFormatError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
    root = pkl[0][: -len("data.pkl")]
    order = root + "byteorder"
    if order in names and zf.read(order).strip() not in (b"little", b""):
        raise ModelFormatError(f"{path} was saved on a big-endian machine; not supported")
    storages: dict[str, Storage] = {}

    def resolve(stype: StorageType, key: str, view: Any) -> Storage:
        if key not in storages:
            entry = f"{root}data/{key}"
            if entry not in names:
                raise ModelFormatError(f"{path} lacks storage {key} (truncated?)")
            st = Storage(stype, key)
            st.attach(_zip_entry(path, mm, zf, entry))
            storages[key] = st
        return storages[key]

    with zf.open(pkl[0]) as f:
        return SafeUnpickler(f, resolve).load()


def _load_legacy(path: str, mm: mmap.mmap) -> Any:
    if mm[:1] != b"\x80":
        raise ModelFormatError(f"{path} is neither a zip nor a legacy PyTorch checkpoint")
    with open(path, "rb") as f:  # buffered (peek): the unpickler reads in chunks, then stops exactly
        return _read_legacy(path, mm, f)


def _read_legacy(path: str, mm: mmap.mmap, f: Any) -> Any:
    if SafeUnpickler(f).load() != LEGACY_MAGIC:
        raise ModelFormatError(f"{path} is a pickle but not a PyTorch checkpoint")
    if SafeUnpickler(f).load() != LEGACY_PROTOCOL:
        raise ModelFormatError(f"{path}: unsupported legacy PyTorch protocol version")
    info = SafeUnpickler(f).load()
    if isinstance(info, dict) and not info.get("little_endian", True):
        raise ModelFormatError(f"{path} was saved on a big-endian machine; not supported")
    storages: dict[str, Storage] = {}
    views: list[tuple[Storage, str, int]] = []

    def resolve(stype: StorageType, key: str, view: Any) -> Storage:
        root = storages.setdefault(key, Storage(stype, key))
        if view is None:
            return root
        # (view_key, byte offset, byte size): a storage that is a slice of the root one
        vkey, offset = str(view[0]), int(view[1])
        if vkey not in storages:
            storages[vkey] = Storage(stype, vkey)
            views.append((storages[vkey], key, offset))
        return storages[vkey]

    obj = SafeUnpickler(f, resolve).load()
    keys = SafeUnpickler(f).load()
    if not isinstance(keys, list):
        raise ModelFormatError(f"{path}: corrupt legacy checkpoint (no storage list)")
    pos = f.tell()
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise ModelFormatError(f"{path}: storage {key} is listed but never used")
        if pos + 8 > len(mm):
            raise ModelFormatError(f"{path} is truncated (storage {key} missing)")
        (numel,) = struct.unpack_from("<q", mm, pos)
        nbytes = numel * st.stype.itemsize
        if numel < 0 or pos + 8 + nbytes > len(mm):
            raise ModelFormatError(f"{path} is truncated (storage {key} runs past the end)")
        st.attach(np.frombuffer(mm, np.uint8, count=nbytes, offset=pos + 8))
        pos += 8 + nbytes
    for st, root_key, offset in views:
        root = storages[root_key].data
        if root is None:
            raise ModelFormatError(f"{path}: storage view of missing storage {root_key}")
        st.attach(root.view(np.uint8)[offset:])
    return obj
