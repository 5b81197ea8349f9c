"""Patch embeddings: a DINOv2 ViT with register tokens, and a single conv layer."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lora_train.model.blocks import Block


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens with one strided conv.

    Args:
        patch_size: patch side in pixels.
        in_chans: image channels.
        embed_dim: token width.
    """

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: `[N, C, H, W]`, H and W multiples of patch_size.

        Returns:
            `[N, (H / p) * (W / p), embed_dim]`, patches in row-major order.
        """
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT (pre-norm blocks with LayerScale, eps 1e-6) with register tokens.

    Token layout: `[cls, registers..., patches...]`. The learned pos-embed covers cls and an
    `img_size / patch_size` square grid; other grids get a bicubic, antialiased interpolation.

    Args:
        img_size: image size of the learned pos-embed grid.
        patch_size: patch side in pixels.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        num_register_tokens: register tokens inserted after cls (not pos-embedded).
        init_values: LayerScale init.
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.gradient_checkpointing = False
        num_patches = (img_size // patch_size) ** 2

        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # Used only for masked-image pretraining; kept for checkpoint compatibility.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Pos-embed for an image of `height x width` pixels.

        Returns:
            `[1, 1 + (height / p) * (width / p), embed_dim]`, cls row first, dtype of pos_embed.
        """
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        num_learned = self.pos_embed.shape[1] - 1
        if grid_h * grid_w == num_learned and grid_h == grid_w:
            return self.pos_embed
        side = math.isqrt(num_learned)
        dim = self.pos_embed.shape[-1]
        pos_embed = self.pos_embed.float()
        patch_pos = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([pos_embed[:, :1], patch_pos], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` normalised images → `[N, 1 + R + P, embed_dim]` input tokens."""
        height, width = images.shape[-2:]
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(height, width).to(x.dtype)
        registers = self.register_tokens.expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            images: `[N, 3, H, W]` ImageNet-normalised images, H and W multiples of patch_size.

        Returns:
            dict with `x_norm_clstoken [N, C]`, `x_norm_regtokens [N, R, C]`,
            `x_norm_patchtokens [N, P, C]` (after the final norm) and `x_prenorm [N, 1+R+P, C]`.
        """
        x = self.prepare_tokens(images)
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        x_norm = self.norm(x)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x,
        }
