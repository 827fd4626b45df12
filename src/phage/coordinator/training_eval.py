"""A trained network on the coordinator: test accuracy, inference and the one-file download (needs torch)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save

from phage.api.requests import MAX_FORWARD_ROWS
from phage.errors import InvalidInput
from phage.training.data import load_dataset
from phage.training.local import accuracy, forward_network
from phage.training.spec import INPUT, NetworkSpec, parse_spec
from phage.training.vnode import VNodeRuntime, local_loss


def warm() -> None:
    """Do once what the first check would: torch's lazy imports (its optimizers pull in
    torch._dynamo) cost seconds on a busy machine, and a node poisoning its updates
    would go unjudged meanwhile."""
    torch.set_num_threads(1)
    block = {"type": "linear", "out_features": 2}
    tiny = parse_spec({"input": {"shape": [4]}, "classes": 2, "vnodes": [{"id": "v", "blocks": [block]}]})
    VNodeRuntime(tiny, "v", seed=0).load_state(VNodeRuntime(tiny, "v", seed=0).state_bytes())


def load_runtimes(net: NetworkSpec, checkpoints: Mapping[str, bytes]) -> dict[str, VNodeRuntime]:
    """Every VNode of a network from its final checkpoint."""
    out = {}
    for v in net.vnodes:
        rt = VNodeRuntime(net, v.id, seed=0)
        rt.load_state(checkpoints[v.id])
        out[v.id] = rt
    return out


def test_accuracy(net: NetworkSpec, dataset: bytes, checkpoints: Mapping[str, bytes]) -> float:
    """Accuracy on the dataset's held-out rows."""
    torch.set_num_threads(1)
    data = load_dataset(dataset, net.input_shape, net.classes)
    return accuracy(net, load_runtimes(net, checkpoints), data.x_test, data.y_test)


def holdout_losses(
    net: NetworkSpec,
    dataset: bytes,
    vnode_id: str,
    *,
    seed: int,
    upstream: Mapping[str, bytes],
    reference: bytes | None,
    candidate: bytes,
    rows: int,
) -> tuple[float, float]:
    """A VNode's local loss on held-out rows: ``(reference, candidate)``, both on the same inputs.

    The inputs come from the VNode's ancestors as checkpointed now (``upstream``), so
    both states are judged against the representation the candidate trained on and
    an upstream VNode's drift is not blamed on this one. ``reference`` None means the
    VNode's initial weights (what a VNode with no validated checkpoint rolls back to).
    """
    torch.set_num_threads(1)
    data = load_dataset(dataset, net.input_shape, net.classes)
    x = torch.from_numpy(data.x_test[:rows])
    y = torch.from_numpy(data.y_test[:rows])
    target = net.vnode(vnode_id)
    outs: dict[str, torch.Tensor] = {INPUT: x}
    with torch.no_grad():
        for v in net.vnodes:
            if v.id == vnode_id:
                break
            if v.id not in upstream:
                continue  # not an ancestor of the judged VNode
            rt = VNodeRuntime(net, v.id, seed=seed)
            rt.load_state(upstream[v.id])
            outs[v.id] = rt.forward([outs[s] for s in v.inputs])
        inputs = [outs[s] for s in target.inputs]

        def loss(state: bytes | None) -> float:
            rt = VNodeRuntime(net, vnode_id, seed=seed)
            if state is not None:
                rt.load_state(state)
            if rt.head is not None:
                rt.head.eval()
            logits = rt.logits(rt.forward(inputs))
            return float(local_loss(target.objective.loss, logits, y, net.classes))

        return loss(reference), loss(candidate)


def forward(net: NetworkSpec, runtimes: Mapping[str, VNodeRuntime], rows: Sequence[Any]) -> dict[str, Any]:
    """Logits and predicted classes for a batch of input rows."""
    if not isinstance(rows, list) or not 0 < len(rows) <= MAX_FORWARD_ROWS:
        raise InvalidInput(f"inputs must be a list of 1 to {MAX_FORWARD_ROWS} rows", field="inputs")
    try:
        x = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidInput("inputs must be numbers in rows of one shape", field="inputs") from None
    if tuple(x.shape[1:]) != tuple(net.input_shape):
        raise InvalidInput(
            f"each input row must have shape {list(net.input_shape)}, got {list(x.shape[1:])}", field="inputs"
        )
    logits = forward_network(net, runtimes, torch.from_numpy(x))
    return {"logits": logits.tolist(), "classes": logits.argmax(dim=1).tolist()}


def weights_file(net: NetworkSpec, runtimes: Mapping[str, VNodeRuntime]) -> bytes:
    """The whole trained network as one safetensors file, its spec in the metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for rt in runtimes.values():
        tensors.update({k: v.contiguous() for k, v in rt.weights().items()})
    return st_save(tensors, metadata={"phage_network_spec": json.dumps(dict(net.raw))})
