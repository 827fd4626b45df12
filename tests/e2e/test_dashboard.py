"""The dashboard in a real browser (Debian's Chromium through Playwright) against real processes.

Screenshots go to ``screenshots/`` at the repository root (gitignored), or to
``$PHAGE_SCREENSHOTS``, so a person can look at what the page shows.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phage.testing import CoordinatorProcess, NodeProcess, stop_all, wait_online, wait_until

playwright_sync = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(os.environ.get("PHAGE_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "screenshots")
JOB = 'open("result.txt", "w").write("forty-two=" + str(6 * 7))\nprint("wrote result.txt")\n'


def _sleepy_job(i: int) -> dict[str, Any]:
    return {
        "kind": "job",
        "files": {"run.sh": f"sleep 0.4\necho {i} > n.txt\n"},
        "manifest": {"entrypoint": "run.sh", "interpreter": "sh", "outputs": ["n.txt"], "timeout_s": 60},
    }


pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Chromium: apt-get install chromium"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    coord = CoordinatorProcess(tmp_path / "coordinator").start()
    yield coord
    coord.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def on_console(msg: Any) -> None:
        # the wrong key tried on purpose answers 401; any other failed request is a bug
        if msg.type == "error" and "status of 401" not in msg.text:
            errors.append(f"console: {msg.text}")

    pg.on("console", on_console)
    yield pg
    context.close()
    assert not errors, errors


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, coord: CoordinatorProcess) -> None:
    page.goto(coord.url + "/")
    expect(page.locator("#signin-key")).to_be_visible()
    page.fill("#signin-key", coord.admin_key)
    page.click("#signin-submit")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#conn")).to_have_class("conn live", timeout=10_000)


def test_dashboard_follows_the_pool_live_and_drives_it(
    coordinator: CoordinatorProcess, page: Page, tmp_path: Path
) -> None:
    coord = coordinator
    page.goto(coord.url + "/")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#signin-key", "phk_not-a-key")
    page.click("#signin-submit")
    expect(page.locator("#signin-error")).to_contain_text("not valid")
    shot(page, "01-sign-in")

    sign_in(page, coord)
    expect(page.locator("#nodes")).to_contain_text("No nodes yet")
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads

    # a node joins: its row appears without a reload
    node = NodeProcess(coord, tmp_path / "node-a", name="node-a", concurrency=2).start()
    try:
        row = page.locator('#nodes tr[data-node-name="node-a"]')
        expect(row).to_be_visible(timeout=30_000)
        expect(row.locator(".badge[data-state=online]")).to_be_visible()
        expect(row).to_contain_text("trusted")
        expect(row).to_contain_text("0 / 2")
        assert page.evaluate("window.__sameDocument") is True
        expect(page.locator('.stat[data-stat="nodes"] .value')).to_contain_text("1")
        shot(page, "02-node-joined")

        # submit a job from the page
        page.click("#submit-open")
        dialog = page.locator("dialog[open]")
        expect(dialog).to_be_visible()
        dialog.locator("textarea[name=content]").fill(JOB)
        dialog.locator("input[name=outputs]").fill("*.txt")
        dialog.locator("input[name=timeout_s]").fill("60")
        shot(page, "03-submit-dialog")
        dialog.locator("button[type=submit]").click()
        expect(page.locator("dialog[open]")).to_have_count(0)

        # the drawer opens on the new task and follows it to verified
        drawer = page.locator("#drawer")
        expect(drawer).to_have_attribute("data-state", "verified", timeout=60_000)
        task_id = drawer.get_attribute("data-task-id")
        assert task_id
        expect(drawer.locator(".attempt")).to_have_count(1)
        expect(drawer.locator(".attempt")).to_contain_text("node-a")
        expect(drawer.locator(".attempt .badge[data-state=succeeded]")).to_be_visible()
        expect(drawer.locator(".attempt .badge[data-state=attested]")).to_be_visible()
        expect(drawer).to_contain_text("wrote result.txt")
        expect(page.locator(f'#tasks tr[data-task-id="{task_id}"]')).to_have_attribute(
            "data-state", "verified"
        )
        shot(page, "04-task-verified")

        # download its output through the page
        with page.expect_download() as info:
            drawer.locator('button[data-output="result.txt"]').click()
        download = info.value
        assert download.suggested_filename == "result.txt"
        assert Path(download.path()).read_text() == "forty-two=42"

        page.keyboard.press("Escape")
        expect(page.locator("#drawer")).to_have_count(0)

        # quarantine, then release, from the page
        node_id = node.node_id
        row.locator("button[data-action=quarantine]").click()
        dialog = page.locator("dialog[open]")
        dialog.locator("textarea[name=reason]").fill("suspect results (dashboard test)")
        dialog.locator("button[type=submit]").click()
        expect(row).to_have_attribute("data-quarantined", "true")
        expect(row.locator(".reason")).to_have_text("suspect results (dashboard test)")
        expect(row.locator("button[data-action=release]")).to_be_visible()
        with coord.client() as c:
            (listed,) = [n for n in c.get("/api/nodes").json()["nodes"] if n["id"] == node_id]
            assert listed["quarantined"] is True
            assert listed["quarantine_reason"] == "suspect results (dashboard test)"
        shot(page, "05-node-quarantined")

        row.locator("button[data-action=release]").click()
        expect(row).to_have_attribute("data-quarantined", "false")
        expect(row.locator("button[data-action=quarantine]")).to_be_visible()
        with coord.client() as c:
            (listed,) = [n for n in c.get("/api/nodes").json()["nodes"] if n["id"] == node_id]
            assert listed["quarantined"] is False

        # a burst of work: the list, the cards and the chart follow it
        burst = [_sleepy_job(i) for i in range(24)]
        with coord.client() as c:
            assert c.post("/api/tasks", json={"tasks": burst}).status_code == 201
        expect(page.locator("#tasks tr[data-state=verified]")).to_have_count(25, timeout=90_000)
        expect(page.locator('.stat[data-stat="verified"] .value')).to_have_text("25", timeout=10_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#chart-legend b')].pop()?.textContent > 0", timeout=10_000
        )
        expect(page.locator("#chart path.line.s-queue")).to_have_count(1)
        expect(row).to_contain_text("0 / 2", timeout=10_000)  # the node's slots are free again
        assert page.evaluate("window.__sameDocument") is True
        shot(page, "06-overview")
    finally:
        node.stop()


def test_node_figures_render_for_gpu_nodes(coordinator: CoordinatorProcess, page: Page) -> None:
    """This machine has no GPU: answer /api/nodes and /api/status as a GPU pool would; check the drawing."""
    gib = 2**30
    base = {
        "registered_at": 0,
        "sandboxes": ["bwrap"],
        "version": "0.1.0",
        "cpu_count": 32,
        "memory_total_bytes": 256 * gib,
        "cpu_percent": 12.0,
        "engines": ["vllm"],
        "trusted": True,
        "quarantined": False,
        "quarantine_reason": "",
    }

    def gpu_node(
        name: str, model: str, used: float, total: float, util: float, temp: float, **extra: Any
    ) -> dict[str, Any]:
        gpus = [
            {
                "index": 0,
                "model": model,
                "vram_total_bytes": int(total * gib),
                "vram_used_bytes": int(used * gib),
                "utilization": util,
                "temperature_c": temp,
            }
        ]
        return {
            **base,
            "id": f"{name}-id-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "name": name,
            "hostname": name,
            "state": "online",
            "last_heartbeat": 0,
            "heartbeat_age_s": 1.2,
            "max_concurrency": 4,
            "active_tasks": 2,
            "loaded_model": "Qwen2.5-Coder-7B",
            "gpus": gpus,
            "vram_total_bytes": int(total * gib),
            "vram_used_bytes": int(used * gib),
            "reputation": {"validated": 41},
            **extra,
        }

    nodes = [
        gpu_node("h100-a", "NVIDIA H100 80GB HBM3", 61.5, 80, 0.87, 71),
        gpu_node(
            "rtx-4090",
            "NVIDIA GeForce RTX 4090",
            23.1,
            24,
            0.99,
            86,
            trusted=False,
            reputation={"validated": 3, "failed_validation": 1},
        ),
        gpu_node(
            "l4-lab",
            "NVIDIA L4",
            2.0,
            24,
            0.0,
            38,
            state="dead",
            heartbeat_age_s=95.0,
            active_tasks=0,
            loaded_model="",
            quarantined=True,
            quarantine_reason="re-verification failed: output differs",
        ),
    ]
    page.route(
        "**/api/nodes",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps({"nodes": nodes})
        ),
    )
    status = {
        "version": "0.1.0",
        "uptime_s": 7380.0,
        "nodes": {"total": 3, "online": 2, "dead": 1},
        "slots": {"total": 8, "busy": 4},
        "vram": {"total_bytes": 104 * gib, "used_bytes": int(84.6 * gib)},
        "queue": {"depth": 7, "by_kind": {"generate": 5, "job": 2}},
        "tasks": {"verified": 1284, "failed": 9, "cancelled": 2, "queued": 7, "running": 4},
    }
    page.route(
        "**/api/status",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(status)),
    )
    sign_in(page, coordinator)
    expect(page.locator('.stat[data-stat="vram"] .value')).to_contain_text("84.6")
    h100 = page.locator('#nodes tr[data-node-name="h100-a"]')
    expect(h100).to_contain_text("NVIDIA H100 80GB HBM3")
    expect(h100.locator(".vram")).to_contain_text("61.5 / 80.0 GiB")
    expect(h100).to_contain_text("87%")
    expect(h100).to_contain_text("71 °C")
    expect(h100).to_contain_text("Qwen2.5-Coder-7B")
    hot = page.locator('#nodes tr[data-node-name="rtx-4090"]')
    expect(hot.locator(".bar.hot")).to_have_count(1)
    expect(hot.locator(".temp-hot")).to_have_text("86 °C")
    expect(hot).to_contain_text("untrusted")
    dead = page.locator('#nodes tr[data-node-name="l4-lab"]')
    expect(dead.locator(".badge[data-state=dead]")).to_be_visible()
    expect(dead.locator(".reason")).to_have_text("re-verification failed: output differs")
    expect(dead.locator("button[data-action=release]")).to_be_visible()
    # wait_until, not sleep: let the heartbeat ticker run once
    wait_until(
        lambda: "s ago" in (h100.locator("td.heartbeat").text_content() or ""), 5, what="heartbeat age"
    )
    shot(page, "07-gpu-nodes")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama made locally (no download), as the integration tests use."""
    pytest.importorskip("transformers")
    from phage.node.engines.tinymodel import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def test_generate_task_shows_every_attempt_with_its_verifier_log(
    page: Page, tmp_path: Path, tiny_model: Path
) -> None:
    # The coordinator re-verifies a sample of trusted passes; no isolating sandbox backend exists yet,
    # so let it re-verify unsandboxed (trusted test code) rather than refuse the pass.
    coordinator = CoordinatorProcess(tmp_path / "coordinator", env={"PHAGE_VERIFY_SANDBOX": "none"})
    nodes = [
        NodeProcess(
            coordinator,
            tmp_path / f"gen-{i}",
            name=f"gen-{i}",
            concurrency=1,
            engine="transformers",
            model=str(tiny_model),
        )
        for i in range(2)
    ]
    try:
        coordinator.start()
        for node in nodes:
            node.start()
        wait_online(coordinator, 2, timeout=90)
        sign_in(page, coordinator)
        expect(page.locator("#nodes tr[data-node-name]")).to_have_count(2)
        expect(page.locator('#nodes tr[data-node-name="gen-0"]')).to_contain_text("tiny-llama")
        generate = {
            "kind": "generate",
            "prompt": "def add(a, b):",
            "model": "tiny-llama",
            "verifier": 'echo "checking output.txt: $(wc -c < output.txt) bytes"; test -s output.txt',
            "max_tokens": 24,
            "n": 2,
        }
        with coordinator.client() as c:
            task = c.post("/api/tasks", json=generate).json()
        row = page.locator(f'#tasks tr[data-task-id="{task["id"]}"]')
        expect(row).to_be_visible()  # arrived over the feed
        row.click()
        drawer = page.locator("#drawer")
        expect(drawer).to_have_attribute("data-state", "verified", timeout=120_000)
        attempts = drawer.locator(".attempt")
        expect(attempts).to_have_count(2)
        expect(attempts.locator(".badge[data-state=attested]")).to_have_count(2)
        expect(attempts.locator("summary", has_text="Verifier log")).to_have_count(2)
        expect(attempts.first).to_contain_text("checking output.txt:")
        expect(drawer).to_contain_text("Candidate output")
        expect(drawer).to_contain_text("completion")
        expect(drawer.locator('button[data-output="output.txt"]')).to_be_visible()
        shot(page, "08-generate-task")
        attempts.last.scroll_into_view_if_needed()
        drawer.screenshot(path=str(SHOTS / "09-generate-attempts.png"))
    finally:
        page.goto("about:blank")  # stop the page polling before its coordinator goes away
        stop_all([*nodes, coordinator])


def test_sharded_models_are_drawn_as_block_bars(coordinator: CoordinatorProcess, page: Page) -> None:
    coord = coordinator
    with coord.client() as c:
        body = {"name": "big", "checkpoint": "/models/big", "num_blocks": 8, "bytes_per_block": 1000}
        assert c.post("/api/models/sharded", json=body).status_code == 201
    sign_in(page, coord)
    card = page.locator("#sharded-card")
    expect(card).to_be_visible()
    expect(card.locator(".block.gap")).to_have_count(8)  # declared, nobody serves it yet
    expect(card).to_contain_text("not ready")
    expect(card).to_contain_text("gaps 0:8")

    # Partly served (as /api/models/sharded answers while nodes join): held blocks, a thin one, a gap.
    def coverage(route: Any) -> None:
        per_block = [2, 2, 2, 1, 0, 0, 1, 1]
        servers = [
            {"node_id": "nodeA" * 8, "blocks": "0:4", "standby": False, "throughput": 0},
            {"node_id": "nodeB" * 8, "blocks": "0:3", "standby": True, "throughput": 0},
            {"node_id": "nodeC" * 8, "blocks": "6:8", "standby": False, "throughput": 0},
        ]
        cov = {
            "per_block": per_block,
            "coverage_percent": 75.0,
            "ready_for_inference": False,
            "gaps": ["4:6"],
            "servers": servers,
        }
        model = {**body, "redundancy": 2, "edge_bytes": 0, "coverage": cov}
        route.fulfill(json={"models": [model]})

    page.route("**/api/models/sharded", coverage)
    expect(card.locator(".block.full")).to_have_count(3, timeout=10_000)
    expect(card.locator(".block.thin")).to_have_count(3)
    expect(card.locator(".block.gap")).to_have_count(2)
    expect(card).to_contain_text("75% of 8 blocks")
    expect(card).to_contain_text("standby")
    shot(page, "sharded-models")


def test_training_jobs_show_their_vnode_graph_and_loss_curves(
    coordinator: CoordinatorProcess, page: Page, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    datasets = pytest.importorskip("sklearn.datasets")
    import numpy as np

    from phage.training.data import dataset_bytes

    coord = coordinator
    nodes = [NodeProcess(coord, tmp_path / f"node-{i}", name=f"trainer-{i}").start() for i in range(2)]
    try:
        wait_online(coord, 2)
        sign_in(page, coord)
        expect(page.locator("#networks")).to_contain_text("No training jobs yet")
        d = datasets.load_digits()
        spec = (Path(__file__).resolve().parents[2] / "examples" / "digits.yaml").read_text()
        with coord.client() as http:
            wait_until(lambda: len(http.get("/api/training/hosts").json()["nodes"]) >= 2, 60, what="hosts")
            blob = dataset_bytes((d.data / 16).astype(np.float32), d.target.astype(np.int64))
            digest = http.post("/api/datasets", content=blob).json()["sha256"]
            r = http.post("/api/networks", json={"spec": spec, "dataset": digest, "training": {"epochs": 2}})
            assert r.status_code == 201, r.text
        net = page.locator(f'#networks .network[data-network="{r.json()["id"]}"]')
        expect(net).to_be_visible(timeout=15_000)
        for vnode in ("stem", "mid", "neck", "out"):
            expect(net.locator(f'.vnode[data-vnode="{vnode}"]')).to_be_visible()
        expect(net.locator(".vnode-host").first).to_contain_text("trainer-", timeout=15_000)
        expect(net.locator(".badge[data-state=completed]")).to_be_visible(timeout=120_000)
        expect(net).to_contain_text("test accuracy")
        assert net.locator("polyline.loss").count() == 4
        shot(page, "10-training")
    finally:
        stop_all(nodes)
