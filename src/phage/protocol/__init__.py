"""The node protocol: ``phage.v1`` protobufs, their generated code, and wire <-> domain conversion."""
