"""Scratch volumes: where they cannot be made, a node says so and refuses to start unless told."""

from __future__ import annotations

from pathlib import Path

import pytest

from phage.errors import SandboxError
from phage.node import agent
from phage.sandbox.bwrap import BwrapSandbox
from phage.sandbox.none import NoneSandbox
from phage.sandbox.scratch import ScratchVolumes, mounted_under

MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "46 27 7:0 / /srv/node/work/a-1 rw,nosuid - ext4 /dev/loop0 rw\n"
    "47 27 7:1 / /srv/node/work/with\\040space rw,nosuid - ext4 /dev/loop1 rw\n"
    "48 46 7:2 / /srv/node/work/a-1/inner rw,nosuid - ext4 /dev/loop2 rw\n"
    "49 27 7:3 / /srv/node/workshop rw,nosuid - ext4 /dev/loop3 rw\n"
)


def test_mounts_below_a_root_are_found_deepest_first(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    found = mounted_under(Path("/srv/node/work"), info)
    assert found == [
        Path("/srv/node/work/a-1/inner"),
        Path("/srv/node/work/a-1"),
        Path("/srv/node/work/with space"),
    ]


def test_a_node_without_volumes_refuses_to_start_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "mounting a filesystem per workspace needs root (this node runs unprivileged)"
    monkeypatch.setattr(ScratchVolumes, "detect", staticmethod(lambda: reason))
    isolating = {"bwrap": BwrapSandbox()}
    with pytest.raises(SandboxError, match="--polled-scratch") as refused:
        agent._scratch_volumes(isolating, polled_ok=False)
    assert reason in refused.value.message and refused.value.field == "polled_scratch"
    assert agent._scratch_volumes(isolating, polled_ok=True) is None  # the operator accepted it
    assert agent._scratch_volumes({"none": NoneSandbox()}, polled_ok=False) is None  # nothing to enforce
