"""FlatSpec: a list of named shapes <-> one flat vector of P scalars.

All T task learners' meta-learned parameters live in one tensor theta [T, P]; a FlatSpec says which slice of a row
is which named parameter, so a module can see its parameters as views into a row (``views``), a state_dict can be
rebuilt from phi [P] (``to_state_dict``) and a state_dict flattened back (``flatten``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FlatSpec:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @staticmethod
    def from_tensors(named: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor]]) -> FlatSpec:
        items = list(named.items()) if isinstance(named, dict) else list(named)
        return FlatSpec(tuple(n for n, _ in items), tuple(tuple(t.shape) for _, t in items))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.numels:
            out.append(acc)
            acc += n
        return tuple(out)

    @property
    def numel(self) -> int:
        return sum(self.numels)

    def views(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat row [..., P] as the named shapes (no copy; autograd flows back into ``row``)."""
        lead = tuple(row.shape[:-1])
        return {name: row[..., off:off + n].view(*lead, *shape)
                for name, shape, off, n in zip(self.names, self.shapes, self.offsets, self.numels)}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The named tensors concatenated into one flat vector [P], in this spec's order."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise KeyError(f"missing parameters: {', '.join(missing)}")
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def to_state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A plain state_dict (independent, contiguous tensors) from a flat vector [P]."""
        return {k: v.detach().clone().contiguous() for k, v in self.views(flat).items()}
