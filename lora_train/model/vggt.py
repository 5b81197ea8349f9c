"""VGGT: aggregator plus camera, depth and point heads (no track head)."""

import torch
import torch.nn as nn

from lora_train.model.aggregator import Aggregator
from lora_train.model.blocks import Attention, sdpa_priority
from lora_train.model.camera_head import CameraHead
from lora_train.model.config import VGGTConfig
from lora_train.model.dpt_head import DPTHead


class VGGT(nn.Module):
    """Visual Geometry Grounded Transformer with the upstream module and parameter names.

    `VGGT(VGGTConfig())` is VGGT-1B with camera, depth and point heads; disabled heads are None.
    Heads always run in float32 with autocast disabled; under bf16 autocast only the
    aggregator runs in reduced precision.

    Args:
        config: sizes and switches; defaults to VGGT-1B.
    """

    def __init__(self, config: VGGTConfig | None = None):
        super().__init__()
        self.config = config = config or VGGTConfig()
        dim_in = config.head_dim_in
        self.aggregator = Aggregator(config)
        self.camera_head = (
            CameraHead(dim_in, config.camera_trunk_depth, config.camera_num_heads, config.camera_mlp_ratio,
                       num_iterations=config.camera_iterations)
            if config.enable_camera
            else None
        )
        dpt_kwargs = dict(
            dim_in=dim_in,
            patch_size=config.patch_size,
            features=config.dpt_features,
            out_channels=config.dpt_out_channels,
            intermediate_layer_idx=config.dpt_intermediate_layer_idx,
            frames_chunk_size=config.dpt_frames_chunk_size,
        )
        self.point_head = DPTHead(output_dim=4, activation="inv_log", **dpt_kwargs) if config.enable_point else None
        self.depth_head = DPTHead(output_dim=2, activation="exp", **dpt_kwargs) if config.enable_depth else None

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute aggregator blocks in backward while training (saves activation memory)."""
        self.config.gradient_checkpointing = enabled
        self.aggregator.set_gradient_checkpointing(enabled)

    def set_attention_backend(self, backend: str) -> None:
        """Preferred SDPA kernel of every attention layer on CUDA inputs: "default" (PyTorch's
        choice), "cudnn", "flash" or "efficient", the others kept as fallbacks. No effect on CPU."""
        priority = sdpa_priority(backend)
        for module in self.modules():
            if isinstance(module, Attention):
                module.sdpa_backends = priority

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Args:
            images: `[B, S, 3, H, W]` or `[S, 3, H, W]` in [0, 1]; H and W multiples of the
                patch size (14).

        Returns:
            dict (keys of disabled heads absent), all heads in float32:
            `pose_enc [B, S, 9]` and `pose_enc_list` (camera_iterations × `[B, S, 9]`);
            `depth [B, S, H, W, 1]`, `depth_conf [B, S, H, W]`;
            `world_points [B, S, H, W, 3]`, `world_points_conf [B, S, H, W]`;
            `images [B, S, 3, H, W]` when not training.
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        tokens_list, patch_start_idx = self.aggregator(images)

        predictions = {}
        with torch.autocast(device_type=images.device.type, enabled=False):
            tokens_list = [tokens.float() for tokens in tokens_list]
            if self.camera_head is not None:
                pose_enc_list = self.camera_head(tokens_list)
                predictions["pose_enc"] = pose_enc_list[-1]
                predictions["pose_enc_list"] = pose_enc_list
            if self.depth_head is not None:
                predictions["depth"], predictions["depth_conf"] = self.depth_head(tokens_list, images, patch_start_idx)
            if self.point_head is not None:
                predictions["world_points"], predictions["world_points_conf"] = self.point_head(
                    tokens_list, images, patch_start_idx
                )
        if not self.training:
            predictions["images"] = images
        return predictions
