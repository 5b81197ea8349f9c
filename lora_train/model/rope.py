"""2D rotary position embedding (RoPE) over a patch grid, as used by the aggregator blocks."""

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
    """2D RoPE: the first half of each head's channels encodes y, the second half x.

    Each half is rotated rotate-half style, `x * cos + rotate(x) * sin` with
    `rotate(x) = cat(-x2, x1)`, using `inv_freq = 1 / frequency ** (arange(0, d, 2) / d)`.
    Has no parameters.

    Args:
        frequency: base frequency (100 in VGGT).
    """

    def __init__(self, frequency: float = 100.0):
        super().__init__()
        self.frequency = frequency

    def _cos_sin(self, dim: int, num_positions: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, dim, 2, device=device).float() / dim))
        positions = torch.arange(num_positions, device=device, dtype=inv_freq.dtype)
        angles = torch.outer(positions, inv_freq).to(dtype)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def _rotate_1d(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        cos = F.embedding(positions, cos)[:, None]
        sin = F.embedding(positions, sin)[:, None]
        return x * cos + self._rotate_half(x) * sin

    def forward(self, x: torch.Tensor, positions: torch.Tensor, num_positions: int) -> torch.Tensor:
        """Rotate queries or keys.

        Args:
            x: `[B, num_heads, N, head_dim]`.
            positions: `[B, N, 2]` int64 (y, x) positions.
            num_positions: an upper bound on the position values + 1 (table size).

        Returns:
            `[B, num_heads, N, head_dim]`.
        """
        half = x.size(-1) // 2
        cos, sin = self._cos_sin(half, num_positions, x.device, x.dtype)
        x_y, x_x = x.chunk(2, dim=-1)
        x_y = self._rotate_1d(x_y, positions[..., 0], cos, sin)
        x_x = self._rotate_1d(x_x, positions[..., 1], cos, sin)
        return torch.cat((x_y, x_x), dim=-1)
