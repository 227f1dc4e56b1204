"""The core layer (docs/design.md)."""
