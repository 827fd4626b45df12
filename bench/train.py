"""Composable networks trained by phage beside end-to-end backprop in one process.

The network is a 4-VNode MLP over scikit-learn's bundled handwritten digits,
made wide enough (``--width``) that a step is real work on a CPU. Measured, in
one run:

* **backprop, 1 process, 1 core**: the same VNode bodies trained end to end, the
  way a user would otherwise train this network; samples/s and test accuracy;
* **local losses, 1 process**: phage's training rule without the pool (what
  pipelining across nodes starts from);
* **phage on 1, 2 and 3 nodes**: real ``phage coordinator`` and ``phage node``
  processes on loopback (mTLS), VNodes placed by the coordinator, activations
  between nodes sent node to node over their data plane (between VNodes on one
  node, in memory; through the coordinator's relay only where a node cannot be
  reached);
  samples/s through the last VNode from when every VNode is stepping to the
  last VNode's last step (start-up — process launch, torch import, placement —
  and the coordinator's final evaluation are left out), samples per CPU-second
  of all its processes, test accuracy, and activation bytes moved between
  processes per step;
* **phage, 2 nodes through the relay**: the same with ``--dataplane-relay`` nodes,
  whose frames all cross the coordinator (in and out): what the direct path saves;
* **phage, checked**: an open pool (every node untrusted) with 5 % of steps
  recomputed on another node: what checking costs.

    .venv/bin/python bench/train.py              # width 1024, 3 epochs
    .venv/bin/python bench/train.py --quick      # width 256, 1 epoch (~1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine_info, wait_for_quiet, write_results

from phage.testing import CoordinatorProcess, NodeProcess, wait_online, wait_until
from phage.training.data import dataset_bytes, load_dataset
from phage.training.local import TrainConfig, accuracy, train_backprop, train_local
from phage.training.spec import parse_spec

console = Console(width=120)


def spec(width: int) -> dict[str, Any]:
    """A 4-VNode MLP: three hidden VNodes of ``width`` and a classifier VNode."""
    hidden = [{"type": "linear", "out_features": width}, {"type": "activation", "fn": "relu"}]
    return {
        "name": f"digits-mlp-{width}",
        "input": {"shape": [64]},
        "classes": 10,
        "vnodes": [
            {"id": "stem", "blocks": hidden},
            {"id": "mid", "blocks": hidden},
            {"id": "neck", "blocks": hidden},
            {"id": "out", "blocks": [{"type": "linear", "out_features": 10}], "objective": {"head": "none"}},
        ],
    }


def in_process(
    raw: dict[str, Any], blob: bytes, cfg: TrainConfig, local: bool, torch_default: bool = False
) -> dict[str, float]:
    torch.set_num_threads(1)
    net = parse_spec(raw)
    data = load_dataset(blob, net.input_shape, net.classes)
    warm = TrainConfig(epochs=1, batch_size=cfg.batch_size, seed=cfg.seed)
    small = load_dataset(blob, net.input_shape, net.classes, test_share=0.9)

    def run(d: Any, c: TrainConfig) -> Any:
        return train_local(net, d, c) if local else train_backprop(net, d, c, torch_default=torch_default)

    run(small, warm)  # torch's lazy imports
    t, cpu = time.perf_counter(), time.process_time()
    rts = run(data, cfg)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {
        "samples_per_s": len(data.x) * cfg.epochs / wall,
        "samples_per_cpu_s": len(data.x) * cfg.epochs / cpu,
        "accuracy": accuracy(net, rts, data.x_test, data.y_test),
        "load_1m": os.getloadavg()[0],
    }


def cpu_seconds(procs: list[Any]) -> float:
    """CPU time so far of these processes (coordinator, nodes) and their children."""
    total = 0.0
    for p in procs:
        root = psutil.Process(p.proc.pid)
        for q in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = q.cpu_times()
                total += t.user + t.system
    return total


def on_pool(
    raw: dict[str, Any],
    blob: bytes,
    cfg: TrainConfig,
    nodes: int,
    *,
    checked: bool,
    work: Path,
    node_args: tuple[str, ...] = (),
) -> dict[str, float]:
    env = {"PHAGE_ADMISSION": "open"} if checked else {}
    coord = CoordinatorProcess(work / "coordinator", heartbeat_s=2.0, env=env).start()
    procs = [
        NodeProcess(coord, work / f"node-{i}", name=f"node-{i}", heartbeat_s=2.0, args=node_args).start()
        for i in range(nodes)
    ]
    try:
        wait_online(coord, nodes, timeout=60)
        with coord.client() as http:
            wait_until(
                lambda: len(http.get("/api/training/hosts").json()["nodes"]) >= nodes, 60, what="hosts"
            )
            digest = http.post("/api/datasets", content=blob).json()["sha256"]
            body = {
                "spec": raw,
                "dataset": digest,
                "training": {
                    "epochs": cfg.epochs,
                    "batch_size": cfg.batch_size,
                    "seed": cfg.seed,
                    "checkpoint_every": 50,
                    "check_rate": 0.05 if checked else 0.0,
                },
            }
            net_id = http.post("/api/networks", json=body).json()["id"]
            start: tuple[float, int, float] | None = None  # steady state: once every VNode has stepped
            end: tuple[float, int, float] | None = None  # the last VNode's last step (no final eval)
            cpu: list[tuple[float, float]] = []  # (wall clock, CPU seconds so far) at every poll
            while True:
                n = http.get(f"/api/networks/{net_id}").json()
                cpu.append((time.time(), cpu_seconds([coord, *procs])))
                out = next(v for v in n["vnodes"] if v["id"] == "out")
                if start is None and all(v["step"] > 0 for v in n["vnodes"]):
                    start = (cpu[-1][0], out["step"], cpu[-1][1])
                if end is None and out["done"]:
                    # The coordinator's clock when the last VNode's final report arrived: the API can
                    # answer a poll late while the coordinator imports torch for the final evaluation,
                    # which this benchmark leaves out; CPU as of the last poll before that moment.
                    at = out["updated_at"]
                    end = (at, out["step"], max((c for t, c in cpu if t <= at), default=cpu[-1][1]))
                if n["state"] != "running":
                    break
                time.sleep(0.1)  # each poll costs the coordinator a little: not much more often
            assert n["state"] == "completed" and start is not None and end is not None, n
            wall = end[0] - start[0]
            hosts = {v["id"]: v["node_id"] for v in n["vnodes"]}
            chain = [v["id"] for v in raw["vnodes"]]
            return {
                "samples_per_s": (end[1] - start[1]) * cfg.batch_size / wall,
                "samples_per_cpu_s": (end[1] - start[1]) * cfg.batch_size / (end[2] - start[2]),
                "accuracy": n["result"]["accuracy"],
                "crossing_edges": sum(hosts[a] != hosts[b] for a, b in itertools.pairwise(chain)),
                "frames_direct": sum(f["direct"] for f in n["result"]["frames"].values()),
                "frames_relayed": sum(f["relayed"] for f in n["result"]["frames"].values()),
                "steps": out["step"],
                "load_1m": os.getloadavg()[0],
            }
    finally:
        for p in procs:
            p.stop()
        coord.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.width, args.epochs = 256, 1
    d = load_digits()
    blob = dataset_bytes((d.data / 16.0).astype(np.float32), d.target.astype(np.int64))
    raw = spec(args.width)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=0)
    # an activation frame: the batch's outputs (float32) and labels (int64); one crossing nodes goes
    # node to node once (through the coordinator's relay: in and out, twice); on one node, in memory
    frame = args.batch_size * args.width * 4 + args.batch_size * 8
    wait_for_quiet(say=console.print)
    load_before = os.getloadavg()
    rows: list[tuple[str, dict[str, float]]] = []
    rows.append(("backprop, 1 process, 1 core", in_process(raw, blob, cfg, local=False)))
    rows.append(
        (
            "backprop, PyTorch's default Adam kernels",
            in_process(raw, blob, cfg, local=False, torch_default=True),
        )
    )
    rows.append(("local losses, 1 process, 1 core", in_process(raw, blob, cfg, local=True)))
    work = Path(tempfile.mkdtemp(prefix="phage-bench-train-"))
    try:
        for n in (1, 2, 3):
            rows.append(
                (
                    f"phage, {n} node{'s' if n > 1 else ''}",
                    on_pool(raw, blob, cfg, n, checked=False, work=work / f"p{n}"),
                )
            )
        relayed = on_pool(
            raw, blob, cfg, 2, checked=False, work=work / "r2", node_args=("--dataplane-relay",)
        )
        rows.append(("phage, 2 nodes, frames through the coordinator's relay", relayed))
        rows.append(
            (
                "phage, 2 untrusted nodes, 5 % checked",
                on_pool(raw, blob, cfg, 2, checked=True, work=work / "c2"),
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0][1]["samples_per_s"]
    table = Table(title=f"digits MLP width {args.width}, {args.epochs} epochs, batch {args.batch_size}")
    for col in ("run", "samples/s", "× backprop", "samples/CPU-s", "accuracy", "bytes/step", "load (1 min)"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, r in rows:
        moved = "–"
        if "crossing_edges" in r:  # per step: every direct frame once, every relayed frame twice
            per_step = (r["frames_direct"] + 2 * r["frames_relayed"]) / max(1, r["steps"])
            moved = f"{per_step * frame / 1e6:.2f} MB ({r['frames_relayed']} relayed)"
        table.add_row(
            name,
            f"{r['samples_per_s']:.0f}",
            f"{r['samples_per_s'] / base:.2f}×",
            f"{r['samples_per_cpu_s']:.0f}",
            f"{r['accuracy']:.4f}",
            moved,
            f"{r['load_1m']:.1f}",
        )
    console.print(table)
    console.print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    write_results(
        "train",
        {
            "machine": machine_info(),
            "args": vars(args),
            "rows": dict(rows),
            "frame_bytes": frame,
            "load_before": load_before,
        },
    )


if __name__ == "__main__":
    main()
