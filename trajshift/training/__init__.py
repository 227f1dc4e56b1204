"""The training layer (docs/design.md)."""
