"""Alembic migrations for the phage store; applied automatically on coordinator start."""
