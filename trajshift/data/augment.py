"""Augmentation as batched tensor ops on the training device (no per-image Python loop).

uint8 [B, H, W, C] -> float [B, 3, H, W]: scale to [0, 1], repeat grayscale to 3 channels, random crop with zero
padding (per-image offsets), random horizontal flip, per-channel normalisation (x - mean) / std.
"""
from __future__ import annotations

import torch


def to_float(images: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float [B, channels, H, W] in [0, 1]; grayscale repeated to 3 channels, colour turned
    into luma for 1."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and channels == 1:       # luma (ITU-R BT.601), as PIL's convert("L")
        x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return x


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to H x W at a uniform random offset per image."""
    if padding <= 0:
        return x
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    # Drawn on the generator's device (the task's): no host-to-device copy per batch.
    where = generator.device if generator is not None else x.device
    oy = torch.randint(0, 2 * padding + 1, (B,), generator=generator, device=where).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (B,), generator=generator, device=where).to(x.device)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None].expand(B, C, H, W + 2 * padding)
    out = padded.gather(2, rows)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :].expand(B, C, H, W)
    return out.gather(3, cols)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    where = generator.device if generator is not None else x.device
    flip = (torch.rand(x.shape[0], generator=generator, device=where) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if mean.shape[1] == 1 and x.shape[1] == 3:
        mean, std = mean.expand(1, 3, 1, 1), std.expand(1, 3, 1, 1)
    return (x - mean) / std


def default_padding(resolution: int) -> int:
    """The reference code's crop padding: 4 px at 32 px and below, else 8."""
    return 4 if resolution <= 32 else 8
