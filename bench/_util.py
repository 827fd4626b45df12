"""Shared helpers for the benchmark scripts: machine facts, percentiles, result files."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def median(values: Iterable[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return percentile(finite, 50) if finite else math.nan


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max in milliseconds, plus the sample count."""
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": (max(seconds) * 1000) if seconds else math.nan,
    }


def fmt_ms(value: float | None) -> str:
    """Milliseconds for a table cell."""
    if value is None or math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_family_model() -> str:
    fam = model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu family") and not fam:
                fam = line.split(":", 1)[1].strip()
            elif line.startswith("model\t") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"family {fam} model {model}" if fam else ""


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return math.nan


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                name = line.split("=", 1)[1].strip().strip('"')
                deb = Path("/etc/debian_version")
                return f"{name} ({deb.read_text().strip()})" if deb.exists() else name
    except OSError:
        pass
    return platform.platform()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.rstrip("\n")
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(extra_tools: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, memory, OS, Python, library versions, source revision."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_id": _cpu_family_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": {
            name: _version(name)
            for name in ("phage", "grpcio", "sqlalchemy", "aiosqlite", "fastapi", "uvicorn", "huey", "arq")
        },
        "git_head": _git("rev-parse", "--short", "HEAD").strip(),
        "git_dirty_files": [line[3:] for line in _git("status", "--porcelain").splitlines() if line],
    }
    for name, argv in (extra_tools or {}).items():
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            info[name] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            info[name] = None
    return info


def write_results(prefix: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON under bench/results/ and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{prefix}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def clean_nan(value: Any) -> Any:
    """NaN → None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_nan(v) for v in value]
    return value


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes) since boot."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def wait_for_quiet(threshold_pct: float = 25.0, max_wait_s: float = 120.0, say: Any = print) -> float:
    """Wait (up to ``max_wait_s``) until the machine is mostly idle; returns the last busy % seen.

    Benchmarks here share the machine with whatever else runs on it; starting a
    run while something else is busy would measure that too.
    """
    import psutil

    deadline = time.monotonic() + max_wait_s
    warned = False
    while True:
        busy = float(psutil.cpu_percent(interval=1.0))
        if busy <= threshold_pct or time.monotonic() > deadline:
            if busy > threshold_pct:
                say(f"machine still {busy:.0f}% busy with other work after {max_wait_s:.0f}s; going ahead")
            return busy
        if not warned:
            say(f"machine {busy:.0f}% busy with other work; waiting for it to quieten")
            warned = True


def keep_logs(tmp: Path, label: str, say: Any = print) -> Path | None:
    """Copy the logs of a failed run to bench/results/failed-<label>-<time>/ before its temp dir goes."""
    dest = BENCH_DIR / "results" / f"failed-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    for log in tmp.rglob("*.log"):
        dest.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy(log, dest / log.name)
    if not dest.exists():
        return None
    say(f"run failed; logs kept in {dest}")
    return dest


@contextlib.contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    """A temporary directory for one run, removed with everything in it afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
