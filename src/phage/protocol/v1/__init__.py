"""Generated ``phage.v1`` code; regenerate with ``python -m phage.protocol.generate``."""
