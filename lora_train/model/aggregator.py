"""Aggregator: per-frame patch tokens, then alternating frame-wise and global attention."""

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from lora_train.model.blocks import Block
from lora_train.model.config import VGGTConfig
from lora_train.model.dino import DinoVisionTransformer, PatchEmbed
from lora_train.model.rope import RotaryPositionEmbedding2D, grid_positions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def expand_special_tokens(tokens: torch.Tensor, batch: int, num_frames: int) -> torch.Tensor:
    """Per-frame copies of a special token pair: index 0 for frame 0, index 1 for the others.

    Args:
        tokens: `[1, 2, N, C]`.

    Returns:
        `[batch * num_frames, N, C]`, frames of one batch element contiguous.
    """
    first = tokens[:, :1].expand(batch, 1, *tokens.shape[2:])
    others = tokens[:, 1:].expand(batch, num_frames - 1, *tokens.shape[2:])
    return torch.cat([first, others], dim=1).reshape(batch * num_frames, *tokens.shape[2:])


class Aggregator(nn.Module):
    """Alternating-attention trunk of VGGT.

    Each frame is patch-embedded (DINOv2 or conv) and gets a camera token and register tokens
    (frame 0 has its own learned pair). Then `depth` times: a frame block attends within each
    frame, a global block attends across all frames of a batch element, and the concatenation
    of both outputs is recorded.

    Args:
        config: model sizes (see `VGGTConfig`).
    """

    def __init__(self, config: VGGTConfig):
        super().__init__()
        dim = config.embed_dim
        self.patch_size = config.patch_size
        self.head_dim = dim // config.num_heads
        self.gradient_checkpointing = config.gradient_checkpointing
        if config.patch_embed == "conv":
            self.patch_embed = PatchEmbed(config.patch_size, 3, dim)
        else:
            self.patch_embed = DinoVisionTransformer(
                img_size=config.img_size,
                patch_size=config.patch_size,
                embed_dim=dim,
                depth=config.dino_depth,
                num_heads=config.dino_num_heads,
                mlp_ratio=config.dino_mlp_ratio,
                num_register_tokens=config.num_register_tokens,
                init_values=1.0,
            )
            self.patch_embed.gradient_checkpointing = config.gradient_checkpointing

        self.rope = RotaryPositionEmbedding2D(config.rope_freq) if config.rope_freq > 0 else None

        def make_block() -> Block:
            return Block(dim, config.num_heads, config.mlp_ratio, config.init_values, qk_norm=config.qk_norm)

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(config.depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(config.depth))

        self.camera_token = nn.Parameter(torch.empty(1, 2, 1, dim))
        self.register_token = nn.Parameter(torch.empty(1, 2, config.num_register_tokens, dim))
        nn.init.normal_(self.camera_token, std=1e-6)
        nn.init.normal_(self.register_token, std=1e-6)
        self.patch_start_idx = 1 + config.num_register_tokens
        self.reset_normalization_buffers()

    def reset_normalization_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)create the non-persistent ImageNet mean/std buffers `[1, 1, 3, 1, 1]`.

        Needed after loading a meta-device model with `assign=True`: these buffers are not
        in the state_dict, so loading leaves them on meta.
        """
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1)
        self.register_buffer("_resnet_mean", mean, persistent=False)
        self.register_buffer("_resnet_std", std, persistent=False)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = enabled
        if isinstance(self.patch_embed, DinoVisionTransformer):
            self.patch_embed.gradient_checkpointing = enabled

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` ImageNet-normalised images → patch tokens `[N, P, C]`."""
        tokens = self.patch_embed(images)
        return tokens["x_norm_patchtokens"] if isinstance(tokens, dict) else tokens

    def _run_block(self, block: Block, tokens: torch.Tensor, rope) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, tokens, rope, use_reentrant=False)
        return block(tokens, rope)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """Args:
            images: `[B, S, 3, H, W]` in [0, 1], H and W multiples of the patch size.

        Returns:
            A list of `depth` tensors `[B, S, P, 2C]` (concat of frame-block and global-block
            outputs, frame first), where P = patch_start_idx + (H / p) * (W / p); and
            `patch_start_idx` (tokens before it are the camera and register tokens).
        """
        batch, num_frames, channels, height, width = images.shape
        if channels != 3:
            raise ValueError(f"expected 3-channel images [B, S, 3, H, W], got {tuple(images.shape)}")
        images = (images - self._resnet_mean) / self._resnet_std
        patch_tokens = self.embed_patches(images.reshape(batch * num_frames, 3, height, width))

        camera = expand_special_tokens(self.camera_token, batch, num_frames)
        registers = expand_special_tokens(self.register_token, batch, num_frames)
        tokens = torch.cat([camera, registers, patch_tokens], dim=1)
        _, num_tokens, dim = tokens.shape

        frame_rope = global_rope = None
        if self.rope is not None:
            grid_h, grid_w = height // self.patch_size, width // self.patch_size
            positions = grid_positions(batch * num_frames, grid_h, grid_w, self.patch_start_idx, images.device)
            frame_rope = self.rope(positions, self.head_dim, max(grid_h, grid_w) + 1)
            global_rope = tuple(t.reshape(batch, 1, num_frames * num_tokens, -1) for t in frame_rope)

        outputs = []
        for frame_block, global_block in zip(self.frame_blocks, self.global_blocks):
            tokens = tokens.reshape(batch * num_frames, num_tokens, dim)
            tokens = self._run_block(frame_block, tokens, frame_rope)
            frame_out = tokens.reshape(batch, num_frames, num_tokens, dim)

            tokens = tokens.reshape(batch, num_frames * num_tokens, dim)
            tokens = self._run_block(global_block, tokens, global_rope)
            global_out = tokens.reshape(batch, num_frames, num_tokens, dim)

            outputs.append(torch.cat([frame_out, global_out], dim=-1))
        return outputs, self.patch_start_idx
