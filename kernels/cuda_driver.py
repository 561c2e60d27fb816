"""Thin wrappers over cuda-python's driver API (`cuda.bindings.driver`).

Only what the CUDA backend needs: device/context, plain device allocations (never managed
memory), modules loaded from cubins, kernel launches on a stream, events, and CUDA graph
capture/replay. Every failing call becomes a one-line `CudaError` (what went wrong, and in
`advice` what kind of remedy applies), which the backend turns into the user's one-line
error: a missing driver, a missing GPU or an exhausted device never shows a traceback.
"""
from __future__ import annotations

import ctypes
import queue
import threading
from typing import Any, Sequence

import numpy as np

GiB = float(1 << 30)

#: `CudaError.advice` values: run on the CPU instead; install the CUDA packages; use less
#: device memory (a smaller or quantized model, or the CPU).
USE_CPU, INSTALL, LESS_MEMORY = "cpu", "install", "memory"


class CudaError(RuntimeError):
    """A CUDA driver or NVRTC failure, one line; `advice` says which remedy applies."""

    def __init__(self, message: str, advice: str = "") -> None:
        super().__init__(message)
        self.advice = advice


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as e:
        raise CudaError("CUDA support needs cuda-python", INSTALL) from e
    return driver


def check(result: Any, what: str) -> Any:
    """Unpack a driver (CUresult, *values) tuple; raise CudaError naming `what` on error."""
    drv = _driver()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != drv.CUresult.CUDA_SUCCESS:
        if err == drv.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
            raise CudaError(f"GPU out of memory during {what}", LESS_MEMORY)
        name = getattr(err, "name", str(err))
        raise CudaError(f"CUDA {what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


_initialised = False


def init() -> int:
    """Initialise the driver; return the number of GPUs (CudaError if none)."""
    global _initialised
    drv = _driver()
    if not _initialised:
        try:
            err = drv.cuInit(0)
        except Exception as e:  # libcuda.so itself is missing
            raise CudaError("no NVIDIA driver found (libcuda could not be loaded)", USE_CPU) from e
        err = err[0] if isinstance(err, tuple) else err
        if err == drv.CUresult.CUDA_ERROR_NO_DEVICE:
            raise CudaError("no CUDA GPU found", USE_CPU)
        check((err,), "driver initialisation")
        _initialised = True
    n = check(drv.cuDeviceGetCount(), "device count")
    if n < 1:
        raise CudaError("no CUDA GPU found", USE_CPU)
    return int(n)


class Device:
    """One GPU with its primary context, made current on the calling thread by `use()`."""

    def __init__(self, ordinal: int) -> None:
        drv = _driver()
        count = init()
        if not 0 <= ordinal < count:
            raise CudaError(f"GPU {ordinal} requested but only {count} found")
        self.ordinal = ordinal
        self.handle = check(drv.cuDeviceGet(ordinal), "device lookup")
        self.ctx = check(drv.cuDevicePrimaryCtxRetain(self.handle), "context creation")
        self.use()
        raw = check(drv.cuDeviceGetName(256, self.handle), "device name")
        self.name = bytes(raw).split(b"\0", 1)[0].decode(errors="replace").strip()
        attr = drv.CUdevice_attribute
        self.cc = (self.attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                   self.attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
        self.sm_count = self.attribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        self.max_smem_optin = self.attribute(attr.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        self._released = False

    @property
    def arch(self) -> str:
        return f"sm_{self.cc[0]}{self.cc[1]}"

    def attribute(self, attr: Any) -> int:
        return int(check(_driver().cuDeviceGetAttribute(attr, self.handle), "device attribute"))

    def use(self) -> None:
        """Make this device's context current on this thread (the engine uses a worker)."""
        check(_driver().cuCtxSetCurrent(self.ctx), "context activation")

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes."""
        self.use()
        free, total = check(_driver().cuMemGetInfo(), "memory query")
        return int(free), int(total)

    def release(self) -> None:
        if not self._released:
            self._released = True
            _driver().cuDevicePrimaryCtxRelease(self.handle)


class Buffer:
    """A plain device allocation (cuMemAlloc). `ptr` is the device address as an int."""

    def __init__(self, device: Device, nbytes: int, what: str = "buffer") -> None:
        drv = _driver()
        self.device = device
        self.nbytes = int(nbytes)
        device.use()
        res = drv.cuMemAlloc(max(self.nbytes, 1))
        if res[0] == drv.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
            free, total = device.mem_info()
            raise CudaError(
                f"GPU out of memory: {what} needs {self.nbytes / GiB:.2f} GiB, {free / GiB:.2f} GiB "
                f"free of {total / GiB:.1f} GiB on {device.name}", LESS_MEMORY)
        self._dptr = check(res, f"allocation of {what}")
        self.ptr = int(self._dptr)

    def upload(self, host: Any, offset: int = 0) -> None:
        """Copy a C-contiguous numpy array to `offset` bytes into the buffer (synchronous)."""
        n = host.nbytes
        if offset + n > self.nbytes:
            raise CudaError(f"internal: upload of {n} bytes overflows a {self.nbytes}-byte buffer")
        self.device.use()
        check(_driver().cuMemcpyHtoD(self.ptr + offset, host.ctypes.data, n), "upload")

    def upload_rows(self, host: Any, offset: int, pitch: int) -> None:
        """Copy the rows of a C-contiguous 2-D array to `offset`, `pitch` bytes apart (a
        pitched copy: w1 and w3 rows interleave on the way, with no host copy)."""
        drv = _driver()
        rows = int(host.shape[0])
        width = host.nbytes // max(rows, 1)
        if rows and offset + (rows - 1) * pitch + width > self.nbytes:
            raise CudaError(f"internal: a {rows} x {width} upload overflows a {self.nbytes}-byte buffer")
        p = drv.CUDA_MEMCPY2D()
        p.srcMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_HOST
        p.srcHost = host.ctypes.data
        p.srcPitch = width
        p.dstMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_DEVICE
        p.dstDevice = self.ptr + offset
        p.dstPitch = pitch
        p.WidthInBytes = width
        p.Height = rows
        self.device.use()
        check(drv.cuMemcpy2D(p), "pitched upload")

    def download(self, host: Any, offset: int = 0) -> None:
        """Copy into a C-contiguous numpy array from `offset` bytes (synchronous)."""
        self.device.use()
        check(_driver().cuMemcpyDtoH(host.ctypes.data, self.ptr + offset, host.nbytes), "download")

    def read_into(self, host_ptr: int, nbytes: int) -> None:
        """Blocking copy of the first `nbytes` to a host address; the caller's context
        must be current (the per-token fast path)."""
        check(_driver().cuMemcpyDtoH(host_ptr, self.ptr, nbytes), "download")

    def free(self) -> None:
        if self.ptr:
            self.device.use()
            _driver().cuMemFree(self._dptr)
            self.ptr = 0


class Stream:
    def __init__(self, device: Device) -> None:
        drv = _driver()
        device.use()
        self.device = device
        self.handle = check(drv.cuStreamCreate(drv.CUstream_flags.CU_STREAM_NON_BLOCKING), "stream creation")

    def synchronize(self) -> None:
        check(_driver().cuStreamSynchronize(self.handle), "stream synchronisation")

    def wait(self, event: "Event") -> None:
        check(_driver().cuStreamWaitEvent(self.handle, event.handle, 0), "stream wait")

    def upload_async(self, buf: Buffer, host: Any, offset: int = 0) -> None:
        check(_driver().cuMemcpyHtoDAsync(buf.ptr + offset, host.ctypes.data, host.nbytes, self.handle),
              "async upload")

    def upload_ptr_async(self, dst: int, host_ptr: int, nbytes: int) -> None:
        """Host address -> device address on this stream (the per-token fast path)."""
        check(_driver().cuMemcpyHtoDAsync(dst, host_ptr, nbytes, self.handle), "async upload")

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        """Device-to-device copy within one context, stream-ordered."""
        check(_driver().cuMemcpyDtoDAsync(dst, src, nbytes, self.handle), "device copy")

    def memset32(self, ptr: int, value: int, count: int) -> None:
        check(_driver().cuMemsetD32Async(ptr, value, count, self.handle), "memset")

    def copy_peer(self, dst: Buffer, src: Buffer, nbytes: int) -> None:
        """Copy between buffers of possibly different devices/contexts."""
        check(_driver().cuMemcpyPeerAsync(dst.ptr, dst.device.ctx, src.ptr, src.device.ctx, nbytes,
                                          self.handle), "device-to-device copy")

    def destroy(self) -> None:
        if self.handle is not None:
            self.device.use()
            _driver().cuStreamDestroy(self.handle)
            self.handle = None


class Event:
    def __init__(self, device: Device, timing: bool = False) -> None:
        drv = _driver()
        device.use()
        flags = 0 if timing else drv.CUevent_flags.CU_EVENT_DISABLE_TIMING
        self.handle = check(drv.cuEventCreate(flags), "event creation")

    def record(self, stream: Stream) -> None:
        check(_driver().cuEventRecord(self.handle, stream.handle), "event record")

    def synchronize(self) -> None:
        check(_driver().cuEventSynchronize(self.handle), "event synchronisation")

    def elapsed_ms(self, start: "Event") -> float:
        return float(check(_driver().cuEventElapsedTime(start.handle, self.handle), "event timing"))


class StagedUploader:
    """Host-to-device uploads through page-locked staging buffers, several threads at once.

    Why: a plain copy from pageable memory (a memory-mapped model) is staged by the driver
    one chunk after another on one thread. Here each worker copies a chunk of the source
    into its own pinned buffer (numpy releases the GIL) and queues the DMA on its own
    stream, so reading the file's pages and the PCIe transfers overlap. `put` queues rows
    (to consecutive rows, or `pitch` bytes apart: w1/w3 interleaved); `wait` returns when
    everything queued has landed and re-raises the first error; `close` frees it all.
    """

    def __init__(self, device: Device, threads: int = 8, chunk: int = 32 << 20) -> None:
        drv = _driver()
        self.device, self.chunk = device, int(chunk)
        self._jobs: queue.Queue = queue.Queue()
        self._errors: list[BaseException] = []
        self._pinned: list[int] = []
        self._streams: list[Stream] = []
        device.use()
        try:
            for _ in range(threads):
                self._pinned.append(int(check(drv.cuMemHostAlloc(self.chunk, 0), "pinned staging allocation")))
                self._streams.append(Stream(device))
        except BaseException:
            self.close()
            raise
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def put(self, buf: Buffer, host: Any, offset: int, pitch: int | None = None) -> None:
        """Rows of a C-contiguous 2-D array to `offset` bytes into `buf`, each `pitch`
        bytes after the last (default: the row width, i.e. contiguous)."""
        rows = int(host.shape[0])
        width = host.nbytes // max(rows, 1)
        pitch = width if pitch is None else int(pitch)
        if rows and offset + (rows - 1) * pitch + width > buf.nbytes:
            raise CudaError(f"internal: a {rows} x {width} upload overflows a {buf.nbytes}-byte buffer")
        step = max(1, self.chunk // max(width, 1))
        if width > self.chunk:
            raise CudaError(f"internal: a {width}-byte row is wider than the staging buffers")
        for r0 in range(0, rows, step):
            self._jobs.put((buf.ptr + offset + r0 * pitch, host[r0:r0 + step], pitch))

    def _work(self, i: int) -> None:
        drv = _driver()
        pinned, stream = self._pinned[i], self._streams[i]
        ok = True
        try:
            self.device.use()
        except BaseException as e:
            self._errors.append(e)
            ok = False
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if not ok or self._errors:
                    continue
                dst, rows, pitch = job
                n = rows.nbytes
                width = n // max(rows.shape[0], 1)
                stream.synchronize()            # this worker's last DMA has left its buffer
                view = (ctypes.c_uint8 * n).from_address(pinned)
                np.copyto(np.frombuffer(view, dtype=np.uint8), rows.reshape(-1).view(np.uint8))
                if pitch == width:
                    check(drv.cuMemcpyHtoDAsync(dst, pinned, n, stream.handle), "staged upload")
                else:
                    p = drv.CUDA_MEMCPY2D()
                    p.srcMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_HOST
                    p.srcHost = pinned
                    p.srcPitch = width
                    p.dstMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_DEVICE
                    p.dstDevice = dst
                    p.dstPitch = pitch
                    p.WidthInBytes = width
                    p.Height = int(rows.shape[0])
                    check(drv.cuMemcpy2DAsync(p, stream.handle), "staged pitched upload")
            except BaseException as e:
                self._errors.append(e)
            finally:
                self._jobs.task_done()

    def wait(self) -> None:
        """Block until every queued row has reached the device; raise the first error."""
        self._jobs.join()
        for s in self._streams:
            try:
                s.synchronize()
            except BaseException as e:
                self._errors.append(e)
        if self._errors:
            err = self._errors[0]
            raise err if isinstance(err, CudaError) else CudaError(f"staged upload failed: {err}")

    def close(self) -> None:
        for t in getattr(self, "_threads", []):
            self._jobs.put(None)
        for t in getattr(self, "_threads", []):
            t.join()
        self._threads = []
        for s in self._streams:
            try:
                s.synchronize()
                s.destroy()
            except CudaError:
                pass
        self._streams = []
        for p in self._pinned:
            _driver().cuMemFreeHost(p)
        self._pinned = []


_CTYPE = {"p": ctypes.c_uint64, "i": ctypes.c_int32, "q": ctypes.c_uint64, "f": ctypes.c_float}


class Kernel:
    """A kernel function with a parameter signature: one char per parameter
    (p pointer, i int32, q uint64, f float32, s a ctypes.Structure passed by value)."""

    def __init__(self, module: "Module", name: str, signature: str) -> None:
        self.name = name
        self.signature = signature
        self.device = module.device
        self.func = check(_driver().cuModuleGetFunction(module.handle, name.encode()), f"kernel lookup {name}")

    def set_max_dynamic_smem(self, nbytes: int) -> None:
        attr = _driver().CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        check(_driver().cuFuncSetAttribute(self.func, attr, int(nbytes)), f"shared-memory limit of {self.name}")

    def launch(self, stream: Stream, grid: Sequence[int], block: int, smem: int, *args: Any) -> None:
        if len(args) != len(self.signature):
            raise CudaError(f"internal: {self.name} takes {len(self.signature)} arguments, got {len(args)}")
        holders = [a if kind == "s" else _CTYPE[kind](a) for kind, a in zip(self.signature, args)]
        params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        gx, gy, gz = (list(grid) + [1, 1])[:3]
        check(_driver().cuLaunchKernel(self.func, gx, gy, gz, block, 1, 1, smem, stream.handle,
                                       ctypes.addressof(params), 0), f"launch of {self.name}")


class Module:
    """A cubin loaded with cuModuleLoadData."""

    def __init__(self, device: Device, cubin: bytes, name: str) -> None:
        device.use()
        self.device = device
        self.name = name
        self._image = cubin  # keep the image alive while the module is loaded
        self.handle = check(_driver().cuModuleLoadData(cubin), f"loading of kernel module {name}")

    def kernel(self, name: str, signature: str) -> Kernel:
        return Kernel(self, name, signature)

    def unload(self) -> None:
        if self.handle is not None:
            self.device.use()
            _driver().cuModuleUnload(self.handle)
            self.handle = None


class Graph:
    """A CUDA graph captured from the work `body()` enqueues on `stream`, replayed by `launch()`."""

    def __init__(self, stream: Stream, body: Any) -> None:
        drv = _driver()
        self.stream = stream
        mode = drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        check(drv.cuStreamBeginCapture(stream.handle, mode), "graph capture start")
        try:
            body()
        except BaseException:
            drv.cuStreamEndCapture(stream.handle)
            raise
        self.graph = check(drv.cuStreamEndCapture(stream.handle), "graph capture")
        self.exec = check(drv.cuGraphInstantiate(self.graph, 0), "graph instantiation")

    def launch(self) -> None:
        check(_driver().cuGraphLaunch(self.exec, self.stream.handle), "graph launch")

    def destroy(self) -> None:
        drv = _driver()
        if self.exec is not None:
            drv.cuGraphExecDestroy(self.exec)
            drv.cuGraphDestroy(self.graph)
            self.exec = None


def copy_bandwidth(device: Device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Measured device-to-device copy bandwidth in bytes/s, counting bytes read + written
    (the HBM roofline used to judge decode speed)."""
    drv = _driver()
    a, b = Buffer(device, nbytes, "bandwidth probe"), Buffer(device, nbytes, "bandwidth probe")
    s = Stream(device)
    t0, t1 = Event(device, timing=True), Event(device, timing=True)
    try:
        check(drv.cuMemcpyDtoDAsync(b.ptr, a.ptr, nbytes, s.handle), "copy")
        t0.record(s)
        for _ in range(repeats):
            check(drv.cuMemcpyDtoDAsync(b.ptr, a.ptr, nbytes, s.handle), "copy")
        t1.record(s)
        t1.synchronize()
        return 2.0 * nbytes * repeats / (t1.elapsed_ms(t0) / 1e3)
    finally:
        s.destroy()
        a.free()
        b.free()
