"""The commands layer (docs/design.md)."""
