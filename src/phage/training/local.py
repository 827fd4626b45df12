"""A whole network in one process: trained with local objectives, or end to end with backprop.

Local training here follows exactly the rules the distributed run follows (each
VNode steps on its own loss, on detached inputs), so it is the reference a
distributed run must match; end-to-end backprop over the same VNode bodies is
the baseline a user would otherwise pick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
import torch

from phage.domain.networks import TrainingConfig as TrainConfig
from phage.training.data import Dataset
from phage.training.spec import INPUT, NetworkSpec
from phage.training.vnode import VNodeRuntime, combine, local_loss, make_optimizer


def forward_network(net: NetworkSpec, runtimes: Mapping[str, VNodeRuntime], x: torch.Tensor) -> torch.Tensor:
    """The network's prediction (logits of the output VNode) for a batch."""
    outs: dict[str, torch.Tensor] = {INPUT: x}
    with torch.no_grad():
        for v in net.vnodes:
            outs[v.id] = runtimes[v.id].forward([outs[s] for s in v.inputs])
        return runtimes[net.output].logits(outs[net.output])


def accuracy(
    net: NetworkSpec,
    runtimes: Mapping[str, VNodeRuntime],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> float:
    """Share of rows whose predicted class is right."""
    for r in runtimes.values():
        r.body.eval()
        if r.head is not None:
            r.head.eval()
    logits = forward_network(net, runtimes, torch.from_numpy(x))
    return float((logits.argmax(dim=1).numpy() == y).mean())


Progress = Callable[[int, Mapping[str, float]], None]


def train_local(
    net: NetworkSpec, data: Dataset, cfg: TrainConfig, *, progress: Progress | None = None
) -> dict[str, VNodeRuntime]:
    """Every VNode learns from its own loss; nothing but detached activations passes between them."""
    runtimes = {v.id: VNodeRuntime(net, v.id, seed=cfg.seed) for v in net.vnodes}
    for seq, xb, yb in data.iter_batches(cfg.epochs, cfg.batch_size, cfg.seed):
        y = torch.from_numpy(yb)
        outs: dict[str, torch.Tensor] = {INPUT: torch.from_numpy(xb)}
        losses: dict[str, float] = {}
        for v in net.vnodes:
            done = runtimes[v.id].train_step(seq, [outs[s] for s in v.inputs], y)
            assert done is not None
            outs[v.id], losses[v.id] = done
        if progress is not None:
            progress(seq, losses)
    return runtimes


def train_backprop(
    net: NetworkSpec, data: Dataset, cfg: TrainConfig, *, torch_default: bool = False
) -> dict[str, VNodeRuntime]:
    """The same VNode bodies trained end to end on the output's loss alone (the usual way).

    ``torch_default``: PyTorch's default optimizer kernels instead of phage's fused ones
    (:func:`make_optimizer`), as plain PyTorch code on a CPU gets them.
    """
    runtimes = {v.id: VNodeRuntime(net, v.id, seed=cfg.seed) for v in net.vnodes}
    out_rt = runtimes[net.output]
    params = [p for r in runtimes.values() for p in r.body.parameters()]
    if out_rt.head is not None:
        params += list(out_rt.head.parameters())
    opt = make_optimizer(net.optimizer, params, fused=not torch_default)
    for _seq, xb, yb in data.iter_batches(cfg.epochs, cfg.batch_size, cfg.seed):
        outs: dict[str, torch.Tensor] = {INPUT: torch.from_numpy(xb)}
        for v in net.vnodes:
            rt = runtimes[v.id]
            rt.body.train()
            outs[v.id] = rt.body(combine(v, [outs[s] for s in v.inputs]))
        loss = local_loss(
            out_rt.spec.objective.loss, out_rt.logits(outs[net.output]), torch.from_numpy(yb), net.classes
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return runtimes
