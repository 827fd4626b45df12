"""Composable networks trained across real node processes with local gradients."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")

from phage.testing import CoordinatorProcess, NodeProcess, stop_all, wait_online, wait_until  # noqa: E402
from phage.training.data import dataset_bytes, load_dataset  # noqa: E402
from phage.training.local import TrainConfig, accuracy, train_backprop  # noqa: E402
from phage.training.spec import load_spec_text  # noqa: E402

# Training state that must outlive a coordinator lives in the store: the restart test runs on both
# backends; the others exercise nodes and checks, where the database is incidental, and run once.
NEUTRAL = pytest.mark.backend_neutral

SPEC = (Path(__file__).parents[2] / "examples" / "digits.yaml").read_text()
EPOCHS = 15
Pool = Callable[..., tuple[CoordinatorProcess, list[NodeProcess]]]
pytestmark = pytest.mark.timeout(900)  # real networks trained across processes: minutes when busy


@pytest.fixture(scope="module")
def digits_blob() -> bytes:
    d = datasets.load_digits()
    return dataset_bytes((d.data / 16.0).astype(np.float32), d.target.astype(np.int64))


@pytest.fixture(scope="module")
def backprop_accuracy(digits_blob: bytes) -> float:
    torch.set_num_threads(1)
    net = load_spec_text(SPEC)
    data = load_dataset(digits_blob, net.input_shape, net.classes)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=32, seed=0)
    return accuracy(net, train_backprop(net, data, cfg), data.x_test, data.y_test)


def wait_hosts(coord: CoordinatorProcess, count: int) -> None:
    def enough() -> bool:
        with coord.client() as http:
            return len(http.get("/api/training/hosts").json()["nodes"]) >= count

    wait_until(enough, timeout=60, what=f"{count} nodes listening for training orders")


def start_training(coord: CoordinatorProcess, blob: bytes, **training: Any) -> str:
    with coord.client() as http:
        up = http.post("/api/datasets", content=blob)
        assert up.status_code == 201, up.text
        r = http.post(
            "/api/networks",
            json={"spec": SPEC, "dataset": up.json()["sha256"], "training": {"epochs": EPOCHS, **training}},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def network(coord: CoordinatorProcess, network_id: str) -> dict[str, Any]:
    with coord.client() as http:
        r = http.get(f"/api/networks/{network_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def wait_finished(coord: CoordinatorProcess, network_id: str, timeout: float = 240) -> dict[str, Any]:
    return wait_until(
        lambda: (n := network(coord, network_id))["state"] != "running" and n,
        timeout=timeout,
        what=f"network {network_id} to finish",
    )


@NEUTRAL
def test_digits_across_three_nodes_matches_backprop(
    pool: Pool, tmp_path: Path, digits_blob: bytes, backprop_accuracy: float
) -> None:
    coord, nodes = pool(nodes=3, heartbeat_s=1.0)
    wait_online(coord, 3)
    wait_hosts(coord, 3)
    data = tmp_path / "digits.npz"
    data.write_bytes(digits_blob)
    spec = tmp_path / "digits.yaml"
    spec.write_text(SPEC)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "phage.client.cli",
            "train",
            str(spec),
            "--data",
            str(data),
            "--epochs",
            str(EPOCHS),
            "--checkpoint-every",
            "10",
            "--no-wait",
            "--url",
            coord.url,
            "--key",
            coord.admin_key,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    network_id = cli.stdout.strip().splitlines()[-1]
    placed = wait_until(
        lambda: (n := network(coord, network_id)) and all(v["node_id"] for v in n["vnodes"]) and n,
        timeout=30,
        what="every VNode placed",
    )
    hosts = {v["node_id"] for v in placed["vnodes"]}
    assert hosts <= {n.node_id for n in nodes} and len(hosts) == 3
    done = wait_finished(coord, network_id)
    assert done["state"] == "completed", done
    acc = done["result"]["accuracy"]
    assert acc >= backprop_accuracy - 0.02, (acc, backprop_accuracy)
    batches = EPOCHS * ((1347 + 31) // 32)
    for v in done["vnodes"]:
        assert v["done"] and v["last_batch"] == batches - 1
        assert v["history"], v["id"]
    # activations crossed between the nodes over their data plane, not through the coordinator
    host_of = {v["id"]: v["node_id"] for v in done["vnodes"]}
    frames = done["result"]["frames"]
    for v in done["vnodes"]:
        consumers = [c["id"] for c in done["vnodes"] if v["id"] in c["inputs"]]
        elsewhere = [c for c in consumers if host_of[c] != host_of[v["id"]]]
        if elsewhere:
            assert frames[v["id"]]["direct"] == batches * len(elsewhere), (v["id"], frames)
            assert frames[v["id"]]["relayed"] == 0, (v["id"], frames)
    assert sum(f["direct"] for f in frames.values()) >= batches * 2, frames  # 3 nodes: 2 edges cross
    with coord.client() as http:
        d = datasets.load_digits()
        rows = (d.data[:20] / 16.0).tolist()
        r = http.post(f"/api/networks/{network_id}/forward", json={"inputs": rows})
        assert r.status_code == 200, r.text
        assert np.mean(np.array(r.json()["classes"]) == d.target[:20]) > 0.8
        w = http.get(f"/api/networks/{network_id}/weights")
        assert w.status_code == 200 and len(w.content) > 10_000
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "phage.client.cli",
            "networks",
            network_id,
            "--url",
            coord.url,
            "--key",
            coord.admin_key,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "completed" in shown and "test accuracy" in shown and "stem" in shown


def hosts_of(coord: CoordinatorProcess, network_id: str) -> dict[str, str]:
    return {v["id"]: v["node_id"] for v in network(coord, network_id)["vnodes"]}


@NEUTRAL
def test_a_killed_node_s_vnodes_resume_elsewhere_from_their_checkpoints(
    pool: Pool, digits_blob: bytes, backprop_accuracy: float
) -> None:
    coord, nodes = pool(nodes=3, heartbeat_s=1.0)
    wait_online(coord, 3)
    wait_hosts(coord, 3)
    network_id = start_training(coord, digits_blob, checkpoint_every=10)

    def stem_checkpointed() -> dict[str, Any] | None:
        n = network(coord, network_id)
        stem = next(v for v in n["vnodes"] if v["id"] == "stem")
        return n if stem["checkpoint"] and stem["step"] >= 60 else None

    wait_until(stem_checkpointed, timeout=120, what="the first VNode's checkpoint")
    victim_id = hosts_of(coord, network_id)["stem"]
    victim = next(n for n in nodes if n.node_id == victim_id)
    moved = [vid for vid, host in hosts_of(coord, network_id).items() if host == victim_id]
    victim.kill()
    relocated = wait_until(
        lambda: (h := hosts_of(coord, network_id)) and all(h[v] not in ("", victim_id) for v in moved) and h,
        timeout=30,
        what="the killed node's VNodes to move",
    )
    assert all(relocated[v] != victim_id for v in moved)
    done = wait_finished(coord, network_id)
    assert done["state"] == "completed", done
    batches = EPOCHS * ((1347 + 31) // 32)
    # resumed from checkpoints, with the producers replaying what their consumers' checkpoints lack,
    # every VNode applies every batch exactly once: nothing in flight was lost with the node
    for v in done["vnodes"]:
        assert v["step"] == batches and v["last_batch"] == batches - 1, v
    assert done["result"]["accuracy"] >= backprop_accuracy - 0.02, done["result"]


@pytest.mark.parametrize(
    ("check_rate", "caught_by"),
    [(0.25, "training update"), (0.0, "held-out rows")],
    ids=["recomputed-steps", "held-out-loss-alone"],
)
@NEUTRAL
def test_a_node_that_poisons_its_updates_is_caught_and_its_vnodes_rolled_back(
    tmp_path: Path, digits_blob: bytes, backprop_accuracy: float, check_rate: float, caught_by: str
) -> None:
    """Caught by whichever check sees it first; with no steps sampled, by the held-out loss alone."""
    coord = CoordinatorProcess(tmp_path / "coordinator", heartbeat_s=1.0, env={"PHAGE_ADMISSION": "open"})
    coord.start()
    nodes = [
        NodeProcess(
            coord,
            tmp_path / f"node-{i}",
            name=f"node-{i}",
            heartbeat_s=1.0,
            env={"PHAGE_TEST_POISON_UPDATES": "1"} if i == 0 else {},
        )
        for i in range(3)
    ]
    try:
        for n in nodes:
            n.start()
        wait_online(coord, 3)
        wait_hosts(coord, 3)
        network_id = start_training(coord, digits_blob, checkpoint_every=10, check_rate=check_rate)
        liar = nodes[0].node_id
        done = wait_finished(coord, network_id, timeout=300)
        assert done["state"] == "completed", done
        with coord.client() as http:
            listed = {n["id"]: n for n in http.get("/api/nodes").json()["nodes"]}
        assert listed[liar]["quarantined"], listed[liar]
        assert "training update" in listed[liar]["quarantine_reason"]
        assert caught_by in listed[liar]["quarantine_reason"], listed[liar]["quarantine_reason"]
        assert not any(n["quarantined"] for nid, n in listed.items() if nid != liar)
        assert all(v["node_id"] != liar for v in done["vnodes"])
        assert done["result"]["accuracy"] >= backprop_accuracy - 0.02, done["result"]
    finally:
        stop_all([*nodes, coord])


BAD_SPECS = [
    (
        "mismatched shapes",
        SPEC.replace("out_features: 10}]", "out_features: 10, in_features: 7}]"),
        "vnodes[3].blocks[0].in_features",
    ),
    ("cycle", SPEC.replace("  - id: stem\n", "  - id: stem\n    inputs: [out]\n"), "vnodes[0].inputs"),
    (
        "unknown block",
        SPEC.replace("type: linear, out_features: 64", "type: teleport"),
        "vnodes[2].blocks[0].type",
    ),
]


@pytest.mark.parametrize(("what", "spec", "field"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_training_input_is_refused_and_starts_nothing(
    pool: Pool, digits_blob: bytes, what: str, spec: str, field: str
) -> None:
    coord, _ = pool(nodes=0)
    with coord.client() as http:
        digest = http.post("/api/datasets", content=digits_blob).json()["sha256"]
        r = http.post("/api/networks", json={"spec": spec, "dataset": digest})
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field, r.json()
        d = datasets.load_digits()
        narrow = dataset_bytes((d.data[:, :32] / 16).astype(np.float32), d.target.astype(np.int64))
        other = http.post("/api/datasets", content=narrow).json()["sha256"]
        r = http.post("/api/networks", json={"spec": SPEC, "dataset": other})
        assert r.status_code == 400 and r.json()["field"] == "dataset.x", r.text
        r = http.post("/api/networks", json={"spec": SPEC, "dataset": "0" * 64})
        assert r.status_code == 404 and r.json()["field"] == "dataset", r.text
        r = http.post("/api/networks", json={"spec": SPEC, "dataset": digest, "training": {"epochs": 0}})
        assert r.status_code == 400 and r.json()["field"] == "training.epochs", r.text
        r = http.post("/api/networks", json={"spec": SPEC, "dataset": digest, "training": {"lr": 1}})
        assert r.status_code == 400 and r.json()["field"] == "training.lr", r.text
        assert http.post("/api/datasets", content=b"").status_code == 400
        assert http.get("/api/networks").json()["networks"] == []


def test_a_restarted_coordinator_picks_training_up_from_its_checkpoints(
    pool: Pool, digits_blob: bytes, backprop_accuracy: float
) -> None:
    coord, _nodes = pool(nodes=2, heartbeat_s=1.0)
    wait_online(coord, 2)
    wait_hosts(coord, 2)
    network_id = start_training(coord, digits_blob, checkpoint_every=10)
    wait_until(
        lambda: all(v["checkpoint"] for v in network(coord, network_id)["vnodes"]),
        timeout=120,
        what="a checkpoint of every VNode",
    )
    coord.kill()
    coord.start()  # same data directory and ports: running jobs reload from the database
    done = wait_finished(coord, network_id)
    assert done["state"] == "completed", done
    batches = EPOCHS * ((1347 + 31) // 32)
    # frames in flight died with the coordinator; every VNode restarted from its checkpoint and the
    # producers replayed what their consumers' checkpoints lacked: every batch applied exactly once
    for v in done["vnodes"]:
        assert v["step"] == batches and v["last_batch"] == batches - 1, v
    assert done["result"]["accuracy"] >= backprop_accuracy - 0.02, done["result"]
