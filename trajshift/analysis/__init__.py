"""Studies that reproduce the paper's figures: each writes a JSON of its numbers and its config next to its plots."""
