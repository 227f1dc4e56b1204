"""The run layer: one orchestration, one identity and one replica rule for every front door (fit, meta-train)."""
