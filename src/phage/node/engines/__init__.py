"""Inference engines a node manages, behind one interface (vLLM's ``EngineClient`` is the model)."""

from phage.node.engines.base import Engine, Generation, GenerationRequest, make_engine

__all__ = ["Engine", "Generation", "GenerationRequest", "make_engine"]
