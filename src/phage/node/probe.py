"""What this machine has: GPUs through NVML where present, else CPU and memory."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import psutil


def _nvml() -> tuple[list[dict[str, Any]], str, str]:
    try:
        import pynvml
    except ImportError:
        return [], "", ""
    try:
        pynvml.nvmlInit()
    except Exception:
        return [], "", ""
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(
                {
                    "index": i,
                    "model": name.decode() if isinstance(name, bytes) else str(name),
                    "vram_total_bytes": int(mem.total),
                    "vram_used_bytes": int(mem.used),
                    "utilization": util.gpu / 100.0,
                    "temperature_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                }
            )
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        driver_s = driver.decode() if isinstance(driver, bytes) else str(driver)
        return gpus, driver_s, f"{cuda // 1000}.{(cuda % 1000) // 10}"
    except Exception:
        return [], "", ""
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def probe_hardware() -> dict[str, Any]:
    """Static facts for Register."""
    gpus, driver, cuda = _nvml()
    return {
        "hostname": socket.gethostname(),
        "gpus": gpus,
        "driver_version": driver,
        "cuda_version": cuda,
        "cpu_count": os.cpu_count() or 1,
        "memory_total_bytes": psutil.virtual_memory().total,
    }


def probe_metrics() -> dict[str, Any]:
    """Changing figures for each heartbeat."""
    gpus, _, _ = _nvml()
    return {
        "gpus": gpus,
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_used_bytes": psutil.virtual_memory().used,
    }
