"""The engine layer (docs/design.md)."""
