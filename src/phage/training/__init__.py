"""Composable networks trained with local gradients.

A network is a graph of *virtual nodes* (VNodes): stateful building blocks, each
with its own local objective, so a VNode learns from its own loss and no
gradient ever crosses a VNode's boundary. That is what lets the VNodes of one
network live on different machines and train concurrently, pipelined.

Layers inside this package, lowest first: ``blocks`` (the registry of building
blocks and their shape rules), ``spec`` (a validated network spec), ``vnode``
(one VNode's module, head, optimizer and checkpoint), ``data`` (datasets and
batches), ``local`` (a whole network trained in one process, with local
objectives or end to end: the reference every distributed run is measured
against).
"""

from phage.training.spec import NetworkSpec, ObjectiveSpec, VNodeSpec, parse_spec

__all__ = ["NetworkSpec", "ObjectiveSpec", "VNodeSpec", "parse_spec"]
