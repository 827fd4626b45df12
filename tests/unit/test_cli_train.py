"""``phage train``'s live table: one row per VNode, including how its outputs travel."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from phage.client.cli_train import progress_table, sent


def vnode(vid: str, frames: dict[str, int], **over: Any) -> dict[str, Any]:
    base = {
        "id": vid,
        "inputs": ["input"],
        "node_id": "n-" + "a" * 20,
        "step": 42,
        "last_batch": 41,
        "loss": 0.5,
        "samples_per_s": 1234.0,
        "done": False,
        "frames": frames,
    }
    return {**base, **over}


def test_outputs_sent_names_each_way_a_vnodes_frames_went() -> None:
    assert sent({"direct": 330, "relayed": 0, "local": 0}) == "330 node to node"
    assert sent({"direct": 0, "relayed": 5, "local": 12}) == "12 in memory, 5 relayed"
    assert sent({"direct": 0, "relayed": 0, "local": 0}) == "–"
    assert sent({}) == "–"  # a coordinator that does not count frames


def test_the_table_shows_placement_progress_and_paths() -> None:
    net = {
        "name": "digits",
        "id": "n-1",
        "state": "running",
        "vnodes": [vnode("stem", {"direct": 7}), vnode("out", {}, done=True, loss=None)],
        "result": None,
    }
    console = Console(record=True, width=200)
    console.print(progress_table(net))
    text = console.export_text()
    assert "stem" in text and "7 node to node" in text and "out ✓" in text
    assert "1234" in text and "0.5000" in text and "outputs sent" in text
