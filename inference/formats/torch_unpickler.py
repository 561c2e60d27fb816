"""Read PyTorch `torch.save` files without PyTorch and without running their pickle code.

A .pth is a pickle, and unpickling can call any importable function, so a hostile file
could run `os.system`. Python's own unpickler is therefore not used at all: `SafeUnpickler`
is a small pickle machine of its own that knows the opcodes `torch.save` writes (plain
data, memo, persistent ids, REDUCE) and resolves globals only from an allow-list (torch's
tensor rebuild functions, its storage type names and OrderedDict) to harmless local
stand-ins; every other global is refused with a `ModelFormatError` before anything is
called. Tensors come back as `TorchTensor` records pointing into memory-mapped storage
bytes, so nothing is copied until a caller asks for the values.

The machine also bounds its own work, because pickle's memo lets a few hundred bytes
describe a structure with 2^40 leaves (a list holding the previous list twice, forty
times): it counts operations and bytes, gives every container a weight (1 + its
children's weights, shared children counted each time they are referenced) and refuses
any container heavier than `MAX_WEIGHT`, refuses changes to a container that is already
inside another one (which would make the recorded weights stale), takes only strings and
small integers as dictionary keys (so hashing is cheap), and never prints a value it has
not bounded. Nothing it builds can then cost more than linear time to walk or print.

Two container layouts exist:
  zip (torch >= 1.6): `<root>/data.pkl` plus one stored (uncompressed) entry
      `<root>/data/<key>` per storage;
  legacy: consecutive pickles (magic number, protocol version, sys info, the object,
      the sorted storage keys), then per storage an int64 element count and its bytes.
"""
from __future__ import annotations

import collections
import mmap
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ModelFormatError
from .common import Raw, map_file

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: Bounds on one pickle (a 70B checkpoint's data.pkl is a few hundred KB and ~100k ops).
MAX_PICKLE_BYTES = 64 << 20
MAX_OPS = 1 << 22
MAX_WEIGHT = 1 << 22        # leaves + containers reachable from one container, with repeats
MAX_STRING = 1 << 20
MAX_LONG_BYTES = 16         # integers up to 2^127: offsets and sizes, never more
MAX_DIMS = 8
MAX_EXTENT = 1 << 40        # a tensor dimension, a stride or an offset (elements)


def describe(v: Any) -> str:
    """A pickled value for an error message, bounded whatever it is (never a full repr)."""
    if isinstance(v, str):
        s = repr(v[:60])
        return s if len(v) <= 60 else s[:-1] + "...'"
    if isinstance(v, (bool, int, float)) or v is None:
        s = repr(v)
        return s if len(s) <= 40 else s[:37] + "..."
    return f"a {type(v).__name__}"


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

    def __init__(self, stype: StorageType, key: str) -> None:
        self.stype = stype
        self.key = key
        self.data: np.ndarray | None = None   # 1-D, element type of stype

    def attach(self, raw: np.ndarray) -> None:
        if raw.size % self.stype.itemsize:
            raise ModelFormatError(f"storage {self.key[:40]} size is not a multiple of its element size")
        self.data = raw.view(self.stype.np_dtype)


class TorchTensor:
    """A strided view description into a `Storage` (what torch's rebuild would make)."""

    def __init__(self, storage: Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    @property
    def kind(self) -> str:
        return self.storage.stype.kind

    def same_data(self, other: "TorchTensor") -> bool:
        """True when both describe the very same elements (a tied classifier)."""
        return (self.storage is other.storage and self.offset == other.offset
                and self.shape == other.shape and self.stride == other.stride)

    def check(self) -> None:
        """Refuse a view that reaches outside its storage or uses an element twice.

        Dimensions of size 1 take no part (their stride is never used); the others,
        sorted by stride, must each step past everything the smaller ones span, so the
        view is an ordinary (possibly transposed) array and its last element bounds it.
        """
        data = self.storage.data
        if not isinstance(data, np.ndarray):
            raise ModelFormatError(f"checkpoint has no data for storage {self.storage.key[:40]}")
        if any(n == 0 for n in self.shape):
            return
        span = 1   # elements from the first to one past the last, over the dims seen
        for s, n in sorted((s, n) for n, s in zip(self.shape, self.stride) if n > 1):
            if s < span:
                raise ModelFormatError(
                    f"a tensor of shape {self.shape} has strides {self.stride} that use elements more than "
                    f"once (corrupt checkpoint)")
            span += (n - 1) * s
        if self.offset + span > data.size:
            raise ModelFormatError(
                f"a tensor of shape {self.shape} reaches past the end of storage {self.storage.key[:40]} "
                f"(file truncated or corrupt)")

    def raw(self) -> Raw:
        """Zero-copy numpy view of the tensor's elements."""
        self.check()
        data = self.storage.data
        item = data.itemsize
        strides = tuple(s * item if n > 1 else 0 for n, s in zip(self.shape, self.stride))
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.shape, strides=strides,
                                               writeable=False)
        return Raw(view, self.kind)


# -- the allow-list's stand-ins -------------------------------------------------------
def _int_tuple(x: Any, what: str) -> tuple[int, ...]:
    if type(x) is not tuple and type(x) is not list:
        raise ModelFormatError(f"checkpoint has a malformed tensor {what}: {describe(x)}")
    if len(x) > MAX_DIMS:
        raise ModelFormatError(f"checkpoint has a tensor {what} of {len(x)} dimensions")
    for i in x:
        if type(i) is not int or not 0 <= i <= MAX_EXTENT:
            raise ModelFormatError(f"checkpoint has a malformed tensor {what} (element {describe(i)})")
    return tuple(x)


def _rebuild_tensor(storage: Any = None, storage_offset: Any = None, size: Any = None, stride: Any = None,
                    *rest: Any) -> TorchTensor:
    """Stand-in for torch._utils._rebuild_tensor(_v2): records the view, runs nothing."""
    if not isinstance(storage, Storage):
        raise ModelFormatError("checkpoint rebuilds a tensor from something that is not a storage")
    if type(storage_offset) is not int or not 0 <= storage_offset <= MAX_EXTENT:
        raise ModelFormatError(f"checkpoint has a tensor with a bad storage offset {describe(storage_offset)}")
    shape, strides = _int_tuple(size, "shape"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise ModelFormatError("checkpoint has a tensor whose shape and stride disagree")
    return TorchTensor(storage, storage_offset, shape, strides)


def _rebuild_parameter(data: Any = None, *rest: Any) -> Any:
    """Stand-in for torch._utils._rebuild_parameter(_with_state): a parameter is its tensor."""
    if not isinstance(data, TorchTensor):
        raise ModelFormatError("checkpoint wraps a non-tensor in a Parameter")
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    """Stand-in for collections.OrderedDict(): an empty one (items come by SETITEMS)."""
    if args:
        raise ModelFormatError("checkpoint builds an OrderedDict from arguments; not a torch state dict")
    return collections.OrderedDict()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
}
_ALLOWED.update({("torch", n): StorageType(n, d, k) for n, (d, k) in _STORAGE_TYPES.items()})
_CALLABLE = frozenset(id(f) for f in (_rebuild_tensor, _rebuild_parameter, _ordered_dict))


# -- the pickle machine ---------------------------------------------------------------------
class _Mark:
    """What MARK pushes (only ever seen by the machine itself)."""


def _fail(msg: str) -> ModelFormatError:
    return ModelFormatError(f"checkpoint pickle {msg}")


class SafeUnpickler:
    """A pickle reader that knows only torch's tensor vocabulary; storages come from `resolve`.

    `data` is a bytes-like object (or a binary file, read up to the size bound); `start`
    is where the pickle begins in it. `load()` returns the object and leaves `pos` just
    after the STOP opcode (the legacy layout puts several pickles one after another).
    """

    def __init__(self, data: Any, resolve: Callable[[StorageType, str, Any], Any] | None = None,
                 start: int = 0) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview, mmap.mmap)):  # a file
            data = data.read(MAX_PICKLE_BYTES + 1)
        self.buf = data
        self.pos = start
        self.end = min(len(data), start + MAX_PICKLE_BYTES)
        self._resolve = resolve

    # -- the allow-list ----------------------------------------------------------------
    def find_class(self, module: Any, name: Any) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise ModelFormatError(
                f"refusing to load: the checkpoint's pickle asks for {str(module)[:60]}.{str(name)[:60]}, which "
                f"is not a tensor type (it may run code); only plain PyTorch weight files are accepted") from None

    def persistent_load(self, pid: Any) -> Any:
        if (self._resolve is None or type(pid) is not tuple or len(pid) < 5 or type(pid[0]) is not str
                or pid[0] != "storage"):
            raise ModelFormatError(f"checkpoint has an unexpected persistent id ({describe(pid)})")
        stype, key = pid[1], pid[2]
        if not isinstance(stype, StorageType) or type(key) not in (str, int):
            raise ModelFormatError("checkpoint names a storage of an unknown type")
        view = pid[5] if len(pid) > 5 else None
        return self._resolve(stype, str(key), view)

    # -- reading bytes -------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            if self.end < len(self.buf) and self.pos + n <= len(self.buf):
                raise _fail(f"is larger than {MAX_PICKLE_BYTES >> 20} MiB")
            raise _fail("ends early (file truncated?)")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(b)

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _line(self) -> str:
        limit = min(self.end, self.pos + 256)
        for k in range(self.pos, limit):
            if self.buf[k] == 0x0A:
                text = bytes(self.buf[self.pos:k])
                self.pos = k + 1
                try:
                    return text.decode("ascii")
                except UnicodeDecodeError:
                    raise _fail("names a global that is not ASCII") from None
        raise _fail("has a malformed global name")

    def _text(self, n: int, encoding: str) -> str:
        if not 0 <= n <= MAX_STRING:
            raise _fail(f"holds a string of {n} bytes")
        try:
            return self._take(n).decode(encoding, "surrogatepass" if encoding == "utf-8" else "strict")
        except UnicodeDecodeError:
            raise _fail("holds a string that is not valid text") from None

    def _bytes(self, n: int) -> bytes:
        if not 0 <= n <= MAX_STRING:
            raise _fail(f"holds a byte string of {n} bytes")
        return self._take(n)

    def _long(self, n: int) -> int:
        if not 0 <= n <= MAX_LONG_BYTES:
            raise _fail(f"holds an integer of {n} bytes")
        return int.from_bytes(self._take(n), "little", signed=True)

    # -- containers and their weights ------------------------------------------------------
    def _new(self, obj: Any, children: Any = ()) -> Any:
        """Register a container built from `children` (which are now inside it)."""
        self._alive.append(obj)   # keeps its id unique while the machine runs
        self._grow(obj, children)
        return obj

    def _inside(self, v: Any) -> None:
        if id(v) in self._weight:
            self._frozen.add(id(v))

    def _grow(self, obj: Any, children: Any) -> None:
        """Add `children` to a container's weight (refused once it is inside another)."""
        if id(obj) in self._frozen:
            raise _fail("changes a container after putting it inside another one")
        w = self._weight.get(id(obj), 1)
        for c in children:
            w += self._weight.get(id(c), 1)
            self._inside(c)
        if w > MAX_WEIGHT:
            raise _fail(f"builds a structure of more than {MAX_WEIGHT} elements (a memo bomb?)")
        self._weight[id(obj)] = w

    def _setitems(self, d: Any, items: list) -> None:
        if not isinstance(d, dict) or len(items) % 2:
            raise _fail("sets items on something that is not a dictionary")
        for k in items[::2]:
            if type(k) is not str and type(k) is not int:
                raise _fail(f"has a dictionary key that is {describe(k)} (only strings and integers are)")
        self._grow(d, items)
        for k in range(0, len(items), 2):
            d[items[k]] = items[k + 1]

    def _append(self, lst: Any, items: list) -> None:
        if type(lst) is not list:
            raise _fail("appends to something that is not a list")
        self._grow(lst, items)
        lst.extend(items)

    # -- the machine ---------------------------------------------------------------------
    def _pop_mark(self) -> list:
        if not self._marks:
            raise _fail("is malformed (no MARK)")
        items = self._stack
        self._stack = self._marks.pop()
        return items

    def _pop(self) -> Any:
        if not self._stack:
            raise _fail("is malformed (stack underflow)")
        return self._stack.pop()

    def load(self) -> Any:
        self._stack: list = []
        self._marks: list[list] = []
        self._memo: dict[int, Any] = {}
        self._weight: dict[int, int] = {}
        self._frozen: set[int] = set()
        self._alive: list = []
        try:
            return self._run()
        finally:
            self._memo = {}
            self._stack = []
            self._marks = []
            self._alive = []

    def _run(self) -> Any:  # noqa: C901  (one branch per opcode is the clearest form)
        push = self._stack.append
        for _ in range(MAX_OPS):
            at = self.pos
            op = self._take(1)
            push = self._stack.append   # MARK swaps the stack
            if op == b"\x80":                          # PROTO
                if self._take(1)[0] > 5:
                    raise _fail("uses an unknown pickle protocol")
            elif op == b"\x95":                        # FRAME (a length hint)
                if self._unpack("<Q") > self.end - self.pos:
                    raise _fail("ends early (file truncated?)")
            elif op == b".":                           # STOP
                return self._pop()
            elif op == b"(":                           # MARK
                self._marks.append(self._stack)
                self._stack = []
            elif op == b"0":                           # POP
                if self._stack:
                    self._stack.pop()
                else:
                    self._pop_mark()
            elif op == b"1":                           # POP_MARK
                self._pop_mark()
            elif op == b"2":                           # DUP
                if not self._stack:
                    raise _fail("is malformed (stack underflow)")
                push(self._stack[-1])
            elif op == b"N":
                push(None)
            elif op == b"\x88":
                push(True)
            elif op == b"\x89":
                push(False)
            elif op == b"J":
                push(self._unpack("<i"))
            elif op == b"K":
                push(self._take(1)[0])
            elif op == b"M":
                push(self._unpack("<H"))
            elif op == b"\x8a":                        # LONG1
                push(self._long(self._take(1)[0]))
            elif op == b"\x8b":                        # LONG4
                push(self._long(self._unpack("<i")))
            elif op == b"G":                           # BINFLOAT
                push(self._unpack(">d"))
            elif op == b"X":
                push(self._text(self._unpack("<I"), "utf-8"))
            elif op == b"\x8c":
                push(self._text(self._take(1)[0], "utf-8"))
            elif op == b"\x8d":
                push(self._text(self._unpack("<Q"), "utf-8"))
            elif op == b"T":                           # BINSTRING (Python 2 str)
                push(self._text(self._unpack("<i"), "ascii"))
            elif op == b"U":
                push(self._text(self._take(1)[0], "ascii"))
            elif op == b"B":
                push(self._bytes(self._unpack("<I")))
            elif op == b"C":
                push(self._bytes(self._take(1)[0]))
            elif op == b"\x8e":
                push(self._bytes(self._unpack("<Q")))
            elif op == b"]":
                push(self._new([]))
            elif op == b"}":
                push(self._new({}))
            elif op == b")":
                push(())
            elif op == b"l":                           # LIST
                items = self._pop_mark()
                self._stack.append(self._new(list(items), items))
            elif op == b"t":                           # TUPLE
                items = self._pop_mark()
                self._stack.append(self._new(tuple(items), items))
            elif op in (b"\x85", b"\x86", b"\x87"):    # TUPLE1..3
                n = op[0] - 0x84
                if len(self._stack) < n:
                    raise _fail("is malformed (stack underflow)")
                items = self._stack[-n:]
                del self._stack[-n:]
                push(self._new(tuple(items), items))
            elif op == b"d":                           # DICT
                items = self._pop_mark()
                d = self._new({})
                self._setitems(d, items)
                self._stack.append(d)
            elif op == b"a":                           # APPEND
                v = self._pop()
                self._append(self._top(), [v])
            elif op == b"e":                           # APPENDS
                items = self._pop_mark()
                self._append(self._top(), items)
            elif op == b"s":                           # SETITEM
                v = self._pop()
                k = self._pop()
                self._setitems(self._top(), [k, v])
            elif op == b"u":                           # SETITEMS
                items = self._pop_mark()
                self._setitems(self._top(), items)
            elif op in (b"q", b"r", b"\x94"):          # BINPUT, LONG_BINPUT, MEMOIZE
                idx = self._take(1)[0] if op == b"q" else self._unpack("<I") if op == b"r" else len(self._memo)
                if not self._stack:
                    raise _fail("is malformed (memoizes nothing)")
                self._memo[idx] = self._stack[-1]
            elif op in (b"h", b"j"):                   # BINGET, LONG_BINGET
                idx = self._take(1)[0] if op == b"h" else self._unpack("<I")
                if idx not in self._memo:
                    raise _fail(f"refers to memo entry {idx} that was never stored")
                push(self._memo[idx])
            elif op == b"c":                           # GLOBAL
                module = self._line()
                push(self.find_class(module, self._line()))
            elif op == b"\x93":                        # STACK_GLOBAL
                name, module = self._pop(), self._pop()
                if type(name) is not str or type(module) is not str:
                    raise _fail("names a global by something that is not a string")
                push(self.find_class(module, name))
            elif op == b"R":                           # REDUCE
                args, func = self._pop(), self._pop()
                if id(func) not in _CALLABLE or type(args) is not tuple:
                    raise _fail(f"calls {describe(func)}, which is not a tensor rebuild function")
                self._inside(args)
                try:
                    obj = func(*args)
                except TypeError:
                    raise _fail(f"calls {func.__name__.lstrip('_')} with the wrong arguments") from None
                push(self._new(obj) if isinstance(obj, dict) else obj)
            elif op == b"b":                           # BUILD
                state = self._pop()
                inst = self._top()
                if not isinstance(inst, dict):
                    raise ModelFormatError(f"checkpoint tries to set state on {describe(inst)}; refusing it")
                self._inside(state)  # a state dict's attributes (_metadata) are never used
            elif op == b"Q":                           # BINPERSID
                pid = self._pop()
                self._inside(pid)
                push(self.persistent_load(pid))
            elif op in (b"i", b"\x81", b"\x92", b"o"):  # INST, NEWOBJ(_EX), OBJ: instances of classes
                if op == b"i":
                    module = self._line()
                    self.find_class(module, self._line())
                raise _fail("creates class instances; only plain PyTorch weight files are accepted")
            else:
                raise _fail(f"uses opcode {op!r} at byte {at}, which torch.save does not write")
        raise _fail(f"runs more than {MAX_OPS} operations")

    def _top(self) -> Any:
        if not self._stack:
            raise _fail("is malformed (stack underflow)")
        return self._stack[-1]


# -- containers ---------------------------------------------------------------------------
#: What a damaged zip makes `zipfile` raise (a seek before the start is an OSError, an
#: unknown compression method NotImplementedError, an encrypted entry RuntimeError).
_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError, struct.error,
           zipfile.BadZipFile, MemoryError, UnicodeDecodeError, EOFError, OSError, NotImplementedError,
           RuntimeError, zlib.error)


def load_torch_file(path: str) -> dict[str, TorchTensor]:
    """Tensors of a `torch.save`d state dict, by name (memory-mapped, nothing executed)."""
    mm = map_file(path)
    try:
        obj = _load_zip(path, mm) if mm[:4] == b"PK\x03\x04" else _load_legacy(path, mm)
        return _state_dict(path, obj)
    except ModelFormatError as e:
        if str(e).startswith("checkpoint"):
            raise ModelFormatError(f"{path}: {e}") from None
        raise
    except zipfile.BadZipFile:
        raise ModelFormatError(f"{path} is truncated or corrupt (its zip directory is unreadable)") from None
    except _ERRORS as e:
        first = str(e).splitlines()[0][:120] if str(e) else "truncated?"
        raise ModelFormatError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from None


def _state_dict(path: str, obj: Any) -> dict[str, TorchTensor]:
    """The name -> tensor mapping inside what was unpickled (plain dict methods only)."""
    if isinstance(obj, dict) and isinstance(dict.get(obj, "model"), dict):
        obj = dict.get(obj, "model")   # a training checkpoint that wraps the state dict
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{path} does not hold a state dict (found {describe(obj)})")
    tensors = {str(k): v for k, v in dict.items(obj) if type(v) is TorchTensor}
    for t in tensors.values():
        t.check()
    return tensors


def _zip_entry(path: str, mm: mmap.mmap, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """Bytes of one stored zip member, as a view into the map (torch never compresses
    storages; a compressed one could inflate without bound, so it is refused)."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ModelFormatError(f"{path}: storage entry {name[:80]} is compressed; torch.save never writes that")
    off = info.header_offset
    if off + 30 > len(mm) or mm[off:off + 4] != b"PK\x03\x04":
        raise ModelFormatError(f"{path}: corrupt zip entry {name[:80]}")
    n_name, n_extra = struct.unpack_from("<HH", mm, off + 26)
    start = off + 30 + n_name + n_extra
    if start + info.file_size > len(mm):
        raise ModelFormatError(f"{path} is truncated (entry {name[:80]} runs past the end)")
    return np.frombuffer(mm, np.uint8, count=info.file_size, offset=start)


def _load_zip(path: str, mm: mmap.mmap) -> Any:
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise ModelFormatError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
    root = pkl[0][: -len("data.pkl")]
    order = root + "byteorder"
    if order in names:
        with zf.open(order) as f:
            if f.read(16).strip() not in (b"little", b""):
                raise ModelFormatError(f"{path} was saved on a big-endian machine; not supported")
    storages: dict[str, Storage] = {}

    def resolve(stype: StorageType, key: str, view: Any) -> Storage:
        if key not in storages:
            entry = f"{root}data/{key}"
            if entry not in names:
                raise ModelFormatError(f"{path} lacks storage {key[:40]} (truncated?)")
            st = Storage(stype, key)
            st.attach(_zip_entry(path, mm, zf, entry))
            storages[key] = st
        elif storages[key].stype != stype:
            raise ModelFormatError(f"{path}: storage {key[:40]} is used with two element types")
        return storages[key]

    info = zf.getinfo(pkl[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise ModelFormatError(f"{path}: its data.pkl is {info.file_size} bytes, too large for a state dict")
    with zf.open(pkl[0]) as f:
        return SafeUnpickler(f, resolve).load()


def _load_legacy(path: str, mm: mmap.mmap) -> Any:
    if mm[:1] != b"\x80":
        raise ModelFormatError(f"{path} is neither a zip nor a legacy PyTorch checkpoint")
    first = SafeUnpickler(mm)
    if first.load() != LEGACY_MAGIC:
        raise ModelFormatError(f"{path} is a pickle but not a PyTorch checkpoint")
    pos = first.pos

    def next_pickle(resolve: Any = None) -> Any:
        nonlocal pos
        up = SafeUnpickler(mm, resolve, pos)
        obj = up.load()
        pos = up.pos
        return obj

    if next_pickle() != LEGACY_PROTOCOL:
        raise ModelFormatError(f"{path}: unsupported legacy PyTorch protocol version")
    info = next_pickle()
    if isinstance(info, dict) and dict.get(info, "little_endian", True) is not True:
        raise ModelFormatError(f"{path} was saved on a big-endian machine; not supported")
    storages: dict[str, Storage] = {}
    views: list[tuple[Storage, str, int, int]] = []

    def resolve(stype: StorageType, key: str, view: Any) -> Storage:
        root = storages.setdefault(key, Storage(stype, key))
        if root.stype != stype:
            raise ModelFormatError(f"{path}: storage {key[:40]} is used with two element types")
        if view is None:
            return root
        # (view key, offset, size), in elements: a storage that is a slice of the root one
        if (type(view) is not tuple or len(view) != 3 or type(view[0]) not in (str, int)
                or any(type(x) is not int or not 0 <= x <= MAX_EXTENT for x in view[1:])):
            raise ModelFormatError(f"{path}: malformed storage view ({describe(view)})")
        vkey = str(view[0])
        if vkey not in storages:
            storages[vkey] = Storage(stype, vkey)
            views.append((storages[vkey], key, view[1], view[2]))
        return storages[vkey]

    obj = next_pickle(resolve)
    keys = next_pickle()
    if type(keys) is not list or not all(type(k) in (str, int) for k in keys):
        raise ModelFormatError(f"{path}: corrupt legacy checkpoint (no storage list)")
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise ModelFormatError(f"{path}: storage {str(key)[:40]} is listed but never used")
        if st.data is not None:
            raise ModelFormatError(f"{path}: storage {str(key)[:40]} is listed twice")
        if pos + 8 > len(mm):
            raise ModelFormatError(f"{path} is truncated (storage {str(key)[:40]} missing)")
        (numel,) = struct.unpack_from("<q", mm, pos)
        nbytes = numel * st.stype.itemsize
        if numel < 0 or pos + 8 + nbytes > len(mm):
            raise ModelFormatError(f"{path} is truncated (storage {str(key)[:40]} runs past the end)")
        st.attach(np.frombuffer(mm, np.uint8, count=nbytes, offset=pos + 8))
        pos += 8 + nbytes
    for st, root_key, offset, size in views:
        root = storages[root_key].data
        if root is None:
            raise ModelFormatError(f"{path}: storage view of missing storage {root_key[:40]}")
        if offset + size > root.size:
            raise ModelFormatError(f"{path}: a storage view reaches past the end of storage {root_key[:40]}")
        st.attach(root[offset:offset + size].view(np.uint8))
    return obj
