"""A .pth whose pickle names os.system, builtins.eval or any other global is refused unrun.

Each hostile file would create a marker file if its pickle were executed; the tests check
the refusal (one line, naming the global) and that the marker never appears, both
in-process and through `llama-chat info` in a subprocess.
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import pytest

from inference.errors import ModelFormatError
from inference.formats import open_source
from inference.formats.torch_unpickler import LEGACY_MAGIC, LEGACY_PROTOCOL, load_torch_file

from .conftest import DATA, ROOT

META1 = os.path.join(DATA, "formats", "meta1")


class _Call:
    """Pickles as a call of `func(*args)`; nothing is called while pickling."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: str) -> dict[str, bytes]:
    touch = f"touch {marker}"
    py = f"open({marker!r}, 'w').write('pwned')"
    # protocol-0 opcodes written by hand: GLOBAL os.system, MARK, STRING, TUPLE, REDUCE, STOP
    raw_os = f"cos\nsystem\n(S'{touch}'\ntR.".encode()
    return {
        "os.system": raw_os,
        "posix.system": pickle.dumps(_Call(os.system, touch), protocol=2),
        "builtins.eval": pickle.dumps(_Call(eval, py), protocol=2),
        "builtins.exec-in-dict": pickle.dumps({"tok_embeddings.weight": _Call(exec, py)}, protocol=4),
        "subprocess.call": pickle.dumps([_Call(subprocess.call, ["touch", marker])], protocol=3),
    }


def _zip_pth(path: str, pkl: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")


def _legacy_pth(path: str, pkl: bytes) -> None:
    buf = io.BytesIO()
    for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}):
        pickle.dump(obj, buf, protocol=2)
    with open(path, "wb") as f:
        f.write(buf.getvalue() + pkl)


def _hostile_dir(tmp_path, name: str, pkl: bytes, legacy: bool) -> str:
    d = tmp_path / f"evil-{name}-{'legacy' if legacy else 'zip'}"
    d.mkdir()
    shutil.copy(os.path.join(META1, "params.json"), d / "params.json")
    (_legacy_pth if legacy else _zip_pth)(str(d / "consolidated.00.pth"), pkl)
    return str(d)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", ["os.system", "posix.system", "builtins.eval", "builtins.exec-in-dict",
                                  "subprocess.call"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, name, legacy):
    marker = tmp_path / "marker"
    d = _hostile_dir(tmp_path, name, _payloads(str(marker))[name], legacy)
    with pytest.raises(ModelFormatError) as e:
        open_source(d).weights()
    msg = str(e.value)
    assert "\n" not in msg and "refusing" in msg
    assert name.split("-")[0].split(".")[-1] in msg  # names the refused global
    assert not marker.exists()


def test_hostile_global_after_real_tensors_is_refused(tmp_path):
    """A genuine checkpoint with one extra poisoned entry is refused as a whole."""
    marker = tmp_path / "marker"
    src = os.path.join(META1, "consolidated.00.pth")
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        pkl_name = next(n for n in names if n.endswith("data.pkl"))
        pkl = z.read(pkl_name)
        members = {n: z.read(n) for n in names}
    # wrap: (real state dict, eval(...)) as one tuple -- the state dict alone is fine
    evil = pickle.dumps(_Call(eval, f"open({str(marker)!r}, 'w')"), protocol=2)
    members[pkl_name] = b"\x80\x02" + pkl[2:-1] + evil[2:-1] + b"\x86."  # TUPLE2 of both, then STOP
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(os.path.join(META1, "params.json"), d / "params.json")
    with zipfile.ZipFile(d / "consolidated.00.pth", "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ModelFormatError, match=r"builtins?_*\.eval"):
        open_source(str(d)).weights()
    assert not marker.exists()


def test_info_on_hostile_pth_exits_nonzero_with_one_line(tmp_path):
    marker = tmp_path / "marker"
    d = _hostile_dir(tmp_path, "os.system", _payloads(str(marker))["os.system"], legacy=False)
    env = dict(os.environ, PYTHONPATH=ROOT)
    for target in (d, os.path.join(d, "consolidated.00.pth")):
        r = subprocess.run([sys.executable, "-m", "app.cli", "info", target], capture_output=True, text=True,
                           cwd=str(tmp_path), env=env, timeout=120)
        assert r.returncode != 0
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "os.system" in lines[0] and "Traceback" not in r.stderr, r.stderr
        assert not marker.exists()


def test_storage_view_outside_its_storage_is_refused(tmp_path):
    """A tensor whose shape reaches past its storage bytes is an error, not an out-of-bounds read."""
    src = os.path.join(META1, "consolidated.00.pth")
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    data_entries = sorted(n for n in members if "/data/" in n)
    members[data_entries[0]] = members[data_entries[0]][:16]  # shrink one storage
    bad = tmp_path / "bad.pth"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ModelFormatError, match="reaches past|multiple of"):
        load_torch_file(str(bad))


def test_safe_unpickler_allows_only_the_torch_vocabulary():
    from inference.formats.torch_unpickler import SafeUnpickler
    for module, name in [("os", "system"), ("builtins", "getattr"), ("torch", "load"), ("numpy", "frombuffer"),
                         ("torch._utils", "_rebuild_from_type_v2"), ("collections", "defaultdict")]:
        up = SafeUnpickler(io.BytesIO(b""))
        with pytest.raises(ModelFormatError, match="refusing"):
            up.find_class(module, name)


def test_state_set_on_the_dict_or_a_tensor_is_never_called(tmp_path):
    """BUILD opcodes can set attributes; a hostile 'items' on the dict must not be called."""
    # dict instance of OrderedDict with a BUILD that sets .items to an allowed function
    evil = (b"\x80\x02ccollections\nOrderedDict\n)R"            # OrderedDict()
            b"N}X\x05\x00\x00\x00itemsctorch._utils\n_rebuild_parameter\ns\x86b.")  # BUILD (None, {items: fn})
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(os.path.join(META1, "params.json"), d / "params.json")
    _zip_pth(str(d / "consolidated.00.pth"), evil)
    with pytest.raises(ModelFormatError) as e:
        open_source(str(d)).weights()
    assert "\n" not in str(e.value)
