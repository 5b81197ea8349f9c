"""Fixtures (placeholder; filled in by the owning area)."""
