"""The GPU the AOT kernels are compiled for, asked of the CUDA driver API through ctypes.

Neither torch nor Triton's driver layer is asked: a CPU build of torch, or one whose CUDA is
newer than the driver, reports no device although the driver sees one, and Triton's driver
layer needs a host C compiler. ``libcuda`` is the driver itself; when it is missing or sees
no device, :class:`CudaUnavailable` says so in one sentence.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["CudaDevice", "CudaUnavailable", "query_device", "LIBCUDA"]

#: The driver library's soname on Linux (``nvcuda.dll`` on Windows, which qm-export does not support).
LIBCUDA = "libcuda.so.1"
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
_CUDA_ERROR_NO_DEVICE = 100


class CudaUnavailable(RuntimeError):
    """No CUDA driver or no visible CUDA device; the message names what is missing."""


@dataclass(frozen=True)
class CudaDevice:
    """CUDA device 0 as the driver sees it.

    Attributes:
        cc: compute capability as ``10 * major + minor`` (H100: ``90``).
        driver_version: ``cuDriverGetVersion`` (``12040`` = CUDA 12.4).
        name: the device name.
    """

    cc: int
    driver_version: int
    name: str

    @property
    def driver_cuda(self) -> str:
        """The driver's CUDA version as text, ``"12.4"``."""
        return f"{self.driver_version // 1000}.{(self.driver_version % 1000) // 10}"


def query_device(load: Callable[[str], Any] = ctypes.CDLL) -> CudaDevice:
    """Device 0 (after ``CUDA_VISIBLE_DEVICES``) from the driver: compute capability, driver
    version, name. ``load`` opens the driver library (a test passes a stand-in).

    Raises:
        CudaUnavailable: ``libcuda.so.1`` cannot be loaded, ``cuInit`` fails, or no device is visible.
    """
    try:
        lib = load(LIBCUDA)
    except OSError as exc:
        raise CudaUnavailable(
            f"no NVIDIA driver: {LIBCUDA} cannot be loaded ({exc}); qm-export build needs a CUDA GPU and its driver"
        ) from None

    def call(fn: str, *args: Any) -> None:
        code = getattr(lib, fn)(*args)
        if code == _CUDA_ERROR_NO_DEVICE:
            raise CudaUnavailable(
                "the NVIDIA driver sees no CUDA device (CUDA_ERROR_NO_DEVICE; check CUDA_VISIBLE_DEVICES)"
            )
        if code != 0:
            raise CudaUnavailable(f"the CUDA driver failed in {fn} with error {code} ({_error_name(lib, code)})")

    version, count, device = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    call("cuDriverGetVersion", ctypes.byref(version))
    call("cuInit", 0)
    call("cuDeviceGetCount", ctypes.byref(count))
    if count.value < 1:
        raise CudaUnavailable("the NVIDIA driver sees no CUDA device (check CUDA_VISIBLE_DEVICES)")
    call("cuDeviceGet", ctypes.byref(device), 0)
    call("cuDeviceGetAttribute", ctypes.byref(major), _CC_MAJOR, device)
    call("cuDeviceGetAttribute", ctypes.byref(minor), _CC_MINOR, device)
    call("cuDeviceGetName", name, len(name), device)
    return CudaDevice(10 * major.value + minor.value, version.value, name.value.decode("utf-8", "replace"))


def _error_name(lib: Any, code: int) -> str:
    text = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(code, ctypes.byref(text)) == 0 and text.value:
            return text.value.decode("ascii", "replace")
    except (AttributeError, OSError):
        pass
    return "unknown error"
