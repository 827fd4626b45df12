"""The hardware probe reads GPUs through NVML (here a fake ``pynvml`` module at that boundary)."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from phage.node.probe import probe_hardware, probe_metrics


def _fake_nvml(fail_init: bool = False) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    state: dict[str, Any] = {"init": 0, "shutdown": 0}

    def init() -> None:
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        state["init"] += 1

    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        total=80 * 2**30, used=(h + 1) * 2**30
    )
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50 + h)  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    m.nvmlDeviceGetTemperature = lambda h, kind: 40 + h  # type: ignore[attr-defined]
    m.nvmlSystemGetDriverVersion = lambda: "550.54.15"  # type: ignore[attr-defined]
    m.nvmlSystemGetCudaDriverVersion = lambda: 12040  # type: ignore[attr-defined]
    m.state = state  # type: ignore[attr-defined]
    return m


def test_gpus_driver_and_cuda_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    hw = probe_hardware()
    assert hw["driver_version"] == "550.54.15" and hw["cuda_version"] == "12.4"
    assert [g["model"] for g in hw["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    g1 = hw["gpus"][1]
    assert g1["vram_total_bytes"] == 80 * 2**30 and g1["vram_used_bytes"] == 2 * 2**30
    assert g1["utilization"] == pytest.approx(0.51) and g1["temperature_c"] == 41.0
    assert hw["cpu_count"] >= 1 and hw["memory_total_bytes"] > 0
    metrics = probe_metrics()
    assert len(metrics["gpus"]) == 2 and metrics["memory_used_bytes"] > 0
    assert fake.state["init"] == fake.state["shutdown"] == 2  # type: ignore[attr-defined]


def test_no_gpu_falls_back_to_cpu_and_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(fail_init=True))
    hw = probe_hardware()
    assert hw["gpus"] == [] and hw["driver_version"] == "" and hw["cpu_count"] >= 1
    assert hw["memory_total_bytes"] > 0
