"""2D rotary position embedding (RoPE) over a patch grid, as used by the aggregator blocks.

The first half of each head's channels encodes the token's row y, the second half its column x.
Each half is rotated rotate-half style, `x * cos + rotate(x) * sin` with
`rotate(x) = cat(-x2, x1)`, at frequencies `1 / frequency ** (arange(0, d, 2) / d)` (d = half
width), duplicated to cover the half. The aggregator computes the per-token cos/sin tables once
per forward pass (`RotaryPositionEmbedding2D`) and every block applies them (`apply_rope`).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def grid_positions(batch: int, height: int, width: int, num_special: int, device=None) -> torch.Tensor:
    """Integer (y, x) positions of the tokens of one frame, for RoPE.

    Patch tokens get their row-major grid coordinates plus 1; the `num_special` tokens that
    precede them (camera and register tokens) get (0, 0).

    Returns:
        `[batch, num_special + height * width, 2]` int64.
    """
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    patch = torch.cartesian_prod(ys, xs) + 1
    special = torch.zeros(num_special, 2, dtype=patch.dtype, device=device)
    return torch.cat([special, patch], dim=0).expand(batch, -1, -1)


class RotaryPositionEmbedding2D(nn.Module):
    """Builds the per-token cos/sin tables of 2D RoPE. Has no parameters.

    Args:
        frequency: base frequency (100 in VGGT).
    """

    def __init__(self, frequency: float = 100.0):
        super().__init__()
        self.frequency = frequency

    def forward(self, positions: torch.Tensor, head_dim: int, num_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            positions: `[B, N, 2]` int64 (y, x) token positions.
            head_dim: channels per attention head (divisible by 4).
            num_positions: an upper bound on the position values + 1 (table size).

        Returns:
            cos and sin, each `[B, 1, N, head_dim]` float32, broadcastable over heads.
        """
        half = head_dim // 2
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, half, 2, device=positions.device).float() / half))
        angles = torch.outer(torch.arange(num_positions, device=positions.device, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        tables = []
        for table in (angles.cos(), angles.sin()):
            per_token = torch.cat([F.embedding(positions[..., 0], table), F.embedding(positions[..., 1], table)], dim=-1)
            tables.append(per_token[:, None])
        return tables[0], tables[1]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys.

    Args:
        x: `[B, num_heads, N, head_dim]`.
        cos, sin: `[B, 1, N, head_dim]` tables from `RotaryPositionEmbedding2D`.

    Returns:
        `[B, num_heads, N, head_dim]`.
    """
    y1, y2, x1, x2 = x.chunk(4, dim=-1)  # (y half, x half), each rotated on its own
    rotated = torch.cat((-y2, y1, -x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)
