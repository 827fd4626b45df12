"""phage: one dependable service for AI work on machines contributed by many owners."""

__version__ = "0.1.0"

__all__ = ["__version__"]
