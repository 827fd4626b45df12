"""The held-out check: an untrusted checkpoint whose local loss on unseen rows regresses is caught.

The judgement alone, the losses it is made from on real handwritten digits, and the
service acting on it: quarantine with the evidence, roll back, and an honest
checkpoint validated instead.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")

from phage.coordinator.training import TrainingService  # noqa: E402
from phage.coordinator.training_checks import (  # noqa: E402
    HoldoutJob,
    HoldoutQueue,
    HoldoutVerdict,
    judge_holdout,
)
from phage.coordinator.training_eval import holdout_losses  # noqa: E402
from phage.coordinator.training_types import HostFacts, Report  # noqa: E402
from phage.domain.networks import TrainingConfig  # noqa: E402
from phage.node.training import poison  # noqa: E402
from phage.store import SqlStore, sqlite_url  # noqa: E402
from phage.store.blobs import BlobStore  # noqa: E402
from phage.training.data import dataset_bytes, load_dataset  # noqa: E402
from phage.training.spec import load_spec_text  # noqa: E402
from phage.training.vnode import VNodeRuntime  # noqa: E402

SPEC_TEXT = (Path(__file__).parents[2] / "examples" / "digits.yaml").read_text()
NET = load_spec_text(SPEC_TEXT)


@pytest.fixture(scope="module")
def digits_blob() -> bytes:
    d = datasets.load_digits()
    return dataset_bytes((d.data / 16.0).astype(np.float32), d.target.astype(np.int64))


def trained(blob: bytes, vnode_id: str, steps: int, *, poisoned: bool = False, start: bytes = b"") -> bytes:
    """A VNode's checkpoint after ``steps`` batches (fed from a fresh stem where it is not the stem)."""
    torch.set_num_threads(1)
    data = load_dataset(blob, NET.input_shape, NET.classes)
    stem = VNodeRuntime(NET, "stem", seed=0)
    rt = stem if vnode_id == "stem" else VNodeRuntime(NET, vnode_id, seed=0)
    if start:
        rt.load_state(start)
    if poisoned:
        rt.tamper = poison
    for seq in range(rt.last_batch + 1, rt.last_batch + 1 + steps):
        xb, yb = data.batch(seq, 32, 0)
        x, y = torch.from_numpy(xb), torch.from_numpy(yb)
        if vnode_id != "stem":
            x = stem.train_step(seq, [x], y)[0]  # type: ignore[index]
        rt.train_step(seq, [x], y)
    return rt.state_bytes()


def test_the_judgement_allows_the_bound_and_no_more() -> None:
    assert not judge_holdout(1.0, 1.0, 0.5)
    assert not judge_holdout(1.0, 0.2, 0.0)  # an improvement always passes
    assert not judge_holdout(1.0, 1.5, 0.5)
    assert judge_holdout(1.0, 1.51, 0.5)
    assert judge_holdout(0.1, 0.11, 0.0)
    assert judge_holdout(1.0, math.nan, 0.5) and judge_holdout(1.0, math.inf, 1000)
    # a rise within the bound is not caught, nor does it become the reference for the next checkpoint
    small_rise = HoldoutVerdict(1.0, 1.2, 0.5)
    assert not small_rise.regressed and not small_rise.improved
    assert HoldoutVerdict(1.0, 0.9, 0.5).improved and not HoldoutVerdict(1.0, math.nan, 0.5).improved


def test_honest_training_lowers_the_held_out_loss_and_poisoned_training_raises_it(digits_blob: bytes) -> None:
    honest = trained(digits_blob, "stem", 20)
    ref, loss = holdout_losses(
        NET, digits_blob, "stem", seed=0, upstream={}, reference=None, candidate=honest, rows=256
    )
    assert loss < ref, (ref, loss)
    poisoned = trained(digits_blob, "stem", 40, poisoned=True, start=honest)
    ref, loss = holdout_losses(
        NET, digits_blob, "stem", seed=0, upstream={}, reference=honest, candidate=poisoned, rows=256
    )
    assert judge_holdout(ref, loss, 0.5), (ref, loss)


def test_a_downstream_vnode_is_judged_on_its_ancestors_checkpoints(digits_blob: bytes) -> None:
    stem = trained(digits_blob, "stem", 30)
    mid = trained(digits_blob, "mid", 30)
    ref, loss = holdout_losses(
        NET, digits_blob, "mid", seed=0, upstream={"stem": stem}, reference=None, candidate=mid, rows=256
    )
    assert loss < ref, (ref, loss)
    assert NET.ancestors("neck") == ["stem", "mid"] and NET.ancestors("stem") == []


async def test_the_queue_keeps_the_newest_checkpoint_per_vnode_upstream_first() -> None:
    q = HoldoutQueue()
    q.put(HoldoutJob("n", "mid", "a", 1, "c1", 10))
    q.put(HoldoutJob("n", "mid", "a", 1, "c2", 20))
    q.put(HoldoutJob("n", "stem", "b", 1, "c3", 10))
    rank = {("n", "stem"): 0, ("n", "mid"): 1}
    assert (await q.take(rank)).vnode_id == "stem"
    assert (await q.take(rank)).checkpoint == "c2"
    assert len(q) == 0


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[TrainingService, list[tuple[str, str]]]]:
    store = SqlStore(sqlite_url(tmp_path / "phage.db"))
    await store.open()
    quarantined: list[tuple[str, str]] = []

    async def quarantine(node_id: str, why: str) -> None:
        quarantined.append((node_id, why))

    svc = TrainingService(
        store=store,
        blobs=BlobStore(tmp_path / "blobs"),
        facts=lambda n: HostFacts(n, trusted=False, usable=True),
        quarantine=quarantine,
        lost_after_s=30,
    )
    try:
        yield svc, quarantined
    finally:
        await store.close()


async def host_and_report(
    svc: TrainingService, network_id: str, vnode_id: str, state: bytes, step: int
) -> None:
    live = svc.live[network_id]
    v = live.states[vnode_id]
    if v.node_id != "u1":
        live.states[vnode_id] = replace(v, node_id="u1", generation=v.generation + 1)
    digest = svc.blobs.put(state)
    report = Report(network_id, vnode_id, live.states[vnode_id].generation, step, step - 1, 1.0, 0, 0, digest)
    assert await svc.report("u1", report)


async def test_an_honest_checkpoint_is_validated_and_a_poisoned_one_caught_and_rolled_back(
    service: tuple[TrainingService, list[tuple[str, str]]], digits_blob: bytes
) -> None:
    svc, quarantined = service
    dataset = svc.blobs.put(digits_blob)
    rec = await svc.submit(load_spec_text_raw(), dataset, TrainingConfig(check_rate=0.0), "admin")
    honest = trained(digits_blob, "stem", 20)
    await host_and_report(svc, rec.id, "stem", honest, 20)
    verdict = await svc.judge_holdout(await svc.holdout.take({}))
    assert verdict is not None and not verdict.regressed
    stem = svc.live[rec.id].states["stem"]
    assert stem.validated_checkpoint == stem.checkpoint and not quarantined  # no recomputation sampled

    poisoned = trained(digits_blob, "stem", 40, poisoned=True, start=honest)
    await host_and_report(svc, rec.id, "stem", poisoned, 60)
    verdict = await svc.judge_holdout(await svc.holdout.take({}))
    assert verdict is not None and verdict.regressed
    assert [n for n, _ in quarantined] == ["u1"]
    assert "training update of VNode stem" in quarantined[0][1] and "held-out rows" in quarantined[0][1]
    caught = svc.caught[-1]
    assert caught["check"] == "held-out loss" and caught["reference"] == stem.validated_checkpoint
    assert caught["loss"] > caught["reference_loss"] + caught["bound"]
    rolled = svc.live[rec.id].states["stem"]
    assert rolled.node_id == "" and rolled.checkpoint == stem.validated_checkpoint


async def test_a_checkpoint_waits_for_its_recomputation_too_where_steps_are_sampled(
    service: tuple[TrainingService, list[tuple[str, str]]], digits_blob: bytes
) -> None:
    svc, quarantined = service
    dataset = svc.blobs.put(digits_blob)
    rec = await svc.submit(load_spec_text_raw(), dataset, TrainingConfig(check_rate=0.1), "admin")
    await host_and_report(svc, rec.id, "stem", trained(digits_blob, "stem", 20), 20)
    assert await svc.judge_holdout(await svc.holdout.take({})) is not None
    # the held-out check passed, the recomputation of a sampled step not yet
    assert svc.live[rec.id].states["stem"].validated_checkpoint == ""
    # a VNode whose producer has no checkpoint yet cannot be judged: its next checkpoint is
    await host_and_report(svc, rec.id, "neck", VNodeRuntime(NET, "neck", seed=0).state_bytes(), 20)
    assert await svc.judge_holdout(await svc.holdout.take({})) is None
    assert not quarantined


def load_spec_text_raw() -> dict[str, object]:
    import yaml

    return dict(yaml.safe_load(SPEC_TEXT))


async def test_after_a_rollback_upstream_the_next_checkpoint_downstream_is_the_new_bar_not_a_verdict(
    service: tuple[TrainingService, list[tuple[str, str]]], digits_blob: bytes
) -> None:
    """A consumer fed by a poisoner looks worse on the rolled-back inputs, through no fault of its own."""
    svc, quarantined = service
    dataset = svc.blobs.put(digits_blob)
    rec = await svc.submit(load_spec_text_raw(), dataset, TrainingConfig(check_rate=0.0), "admin")
    live = svc.live[rec.id]
    honest = trained(digits_blob, "stem", 20)
    await host_and_report(svc, rec.id, "stem", honest, 20)
    await svc.judge_holdout(await svc.holdout.take({}))
    live.states["mid"] = replace(live.states["mid"], node_id="h2", generation=1)
    await svc._roll_back("u1")  # as if the stem's host had been caught
    assert live.rebase == {"mid", "neck", "out"}
    digest = svc.blobs.put(trained(digits_blob, "mid", 20))
    live.states["stem"] = replace(live.states["stem"], checkpoint=svc.blobs.put(honest))
    job = HoldoutJob(rec.id, "mid", "h2", 1, digest, 20)
    assert await svc.judge_holdout(job) is None
    assert live.references["mid"] == digest and "mid" not in live.rebase
    assert await svc.judge_holdout(replace(job, step=30)) is not None  # judged again from the next one on
    assert not quarantined
