"""Transformer building blocks shared by the DINO ViT, the aggregator and the camera head."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lora_train.model.rope import apply_rope

RopeTables = tuple[torch.Tensor, torch.Tensor]  # cos, sin: [B, 1, N, head_dim] each

# PyTorch's own order; a preferred backend goes first and the others stay behind it as fallbacks,
# so inputs the preferred kernel cannot take (fp32 heads, odd head dims, old GPUs) still run.
_SDPA_FALLBACKS = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
)
SDPA_PREFERENCES = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def sdpa_priority(backend: str) -> list[SDPBackend] | None:
    """SDPA backends in priority order for a backend name (`model.attention_backend`).

    "default" → None (PyTorch decides); "cudnn" / "flash" / "efficient" → that kernel first.
    """
    if backend == "default":
        return None
    if backend not in SDPA_PREFERENCES:
        raise ValueError(f"unknown attention backend {backend!r} (default, {', '.join(SDPA_PREFERENCES)})")
    preferred = SDPA_PREFERENCES[backend]
    return [preferred, *(b for b in _SDPA_FALLBACKS if b != preferred)]


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head qk LayerNorm and 2D RoPE.

    Args:
        dim: token width.
        num_heads: attention heads; head_dim = dim / num_heads.
        qkv_bias / proj_bias: biases of the `qkv` and `proj` Linears.
        qk_norm: LayerNorm(head_dim, eps 1e-5) on q and k, per head, before RoPE.

    Attributes:
        sdpa_backends: SDPA backends in priority order for CUDA inputs (see `sdpa_priority`), or
            None for PyTorch's choice. CPU inputs always take PyTorch's choice.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.sdpa_backends: list[SDPBackend] | None = None

    def forward(self, x: torch.Tensor, rope: RopeTables | None = None) -> torch.Tensor:
        """Args:
            x: `[B, N, dim]`.
            rope: per-token RoPE cos/sin tables, or None for no positional rotation.

        Returns:
            `[B, N, dim]`.
        """
        batch, num_tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        if self.sdpa_backends is not None and q.is_cuda:
            with sdpa_kernel(self.sdpa_backends, set_priority=True):
                x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(batch, num_tokens, dim)
        return self.proj(x)


class LayerScale(nn.Module):
    """Per-channel scale `x * gamma`.

    Args:
        dim: channels.
        init_values: initial value of every gamma entry.
    """

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """`fc2(gelu(fc1(x)))` with exact (erf) GELU.

    Args:
        in_features: input width.
        hidden_features: hidden width.
        out_features: output width (default: in_features).
        bias: biases of both Linears.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / dim.
        init_values: LayerScale init.
        norm_eps: LayerNorm eps of norm1/norm2 (1e-5 in the aggregator and heads, 1e-6 in DINO).
        qk_norm: per-head qk LayerNorm in attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        norm_eps: float = 1e-5,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor, rope: RopeTables | None = None) -> torch.Tensor:
        """Args:
            x: `[B, N, dim]`.
            rope: per-token RoPE cos/sin tables, or None.

        Returns:
            `[B, N, dim]`.
        """
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))
