"""`VGGTConfig`: every size and switch of our VGGT, with VGGT-1B as the default."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from lora_train.errors import UserError

PATCH_EMBED_KINDS = ("dinov2", "conv")


@dataclass
class VGGTConfig:
    """Sizes and switches of a VGGT model. `VGGTConfig()` is VGGT-1B without the track head.

    The DINO patch embedding and the aggregator share `embed_dim` (the DINO patch tokens feed
    the aggregator directly); depth and head counts are separate. Camera and DPT heads read
    concatenated frame/global tokens, so their input width is `2 * embed_dim`.

    Attributes:
        img_size: image size the DINO pos-embed grid is built for (grid = img_size / patch_size);
            other sizes are handled by interpolating the pos-embed.
        patch_size: pixels per patch side; input H and W must be multiples of it.
        embed_dim: token width of the DINO patch embedding and the aggregator blocks.
        depth: number of frame blocks (= number of global blocks = number of aggregator outputs).
        num_heads: attention heads of the aggregator blocks.
        mlp_ratio: MLP hidden width / embed_dim of the aggregator's frame and global blocks.
        num_register_tokens: register tokens of the aggregator and of the DINO ViT.
        qk_norm: per-head LayerNorm of q and k in the aggregator blocks.
        rope_freq: base frequency of the 2D RoPE in the aggregator blocks; 0 disables RoPE.
        init_values: LayerScale init of the aggregator blocks.
        patch_embed: "dinov2" (DINOv2 ViT with registers, as VGGT-1B) or "conv" (one conv layer).
        dino_depth: number of DINO ViT blocks.
        dino_num_heads: attention heads of the DINO ViT blocks.
        dino_mlp_ratio: MLP hidden width / embed_dim of the DINO ViT blocks.
        camera_trunk_depth: transformer blocks in the camera head trunk.
        camera_num_heads: attention heads of the camera head trunk.
        camera_mlp_ratio: MLP hidden width / (2 * embed_dim) of the camera head trunk.
        camera_iterations: refinement iterations of the camera head (one pose_enc each).
        dpt_features: fusion width of the DPT heads.
        dpt_out_channels: per-level projection widths of the DPT heads (4 levels).
        dpt_intermediate_layer_idx: aggregator outputs the 4 DPT levels read.
        dpt_frames_chunk_size: frames per DPT chunk (memory bound; does not change results).
        enable_camera / enable_depth / enable_point: build the camera, depth, point head.
        gradient_checkpointing: recompute aggregator (frame, global, DINO) blocks in backward
            when training, to save activation memory.
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_freq: float = 100.0
    init_values: float = 0.01
    patch_embed: str = "dinov2"
    dino_depth: int = 24
    dino_num_heads: int = 16
    dino_mlp_ratio: float = 4.0
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_mlp_ratio: float = 4.0
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_intermediate_layer_idx: tuple[int, int, int, int] = (4, 11, 17, 23)
    dpt_frames_chunk_size: int = 8
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True
    gradient_checkpointing: bool = False

    def __post_init__(self):
        for key in ("dpt_out_channels", "dpt_intermediate_layer_idx"):
            try:
                setattr(self, key, tuple(int(v) for v in getattr(self, key)))
            except (TypeError, ValueError):
                raise UserError(f"model config key '{key}' = {getattr(self, key)!r}: must be 4 integers") from None
        self._validate()

    def _validate(self) -> None:
        def fail(key: str, why: str):
            raise UserError(f"model config key '{key}' = {getattr(self, key)!r}: {why}")

        if self.patch_embed not in PATCH_EMBED_KINDS:
            fail("patch_embed", f"must be one of {', '.join(PATCH_EMBED_KINDS)}")
        for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "dino_depth",
                    "dino_num_heads", "camera_trunk_depth", "camera_num_heads",
                    "camera_iterations", "dpt_features", "dpt_frames_chunk_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(key, "must be a positive integer")
        for key in ("mlp_ratio", "dino_mlp_ratio", "camera_mlp_ratio"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                fail(key, "must be a positive number")
        if self.num_register_tokens < 0:
            fail("num_register_tokens", "must be >= 0")
        if self.img_size % self.patch_size:
            fail("img_size", f"must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            fail("num_heads", f"must divide embed_dim {self.embed_dim}")
        if self.embed_dim % self.dino_num_heads:
            fail("dino_num_heads", f"must divide embed_dim {self.embed_dim}")
        if (2 * self.embed_dim) % self.camera_num_heads:
            fail("camera_num_heads", f"must divide 2 * embed_dim = {2 * self.embed_dim}")
        if self.rope_freq > 0 and (self.embed_dim // self.num_heads) % 4:
            fail("num_heads", "2D RoPE needs a head dim (embed_dim / num_heads) divisible by 4")
        if len(self.dpt_out_channels) != 4 or min(self.dpt_out_channels) <= 0:
            fail("dpt_out_channels", "must be 4 positive integers")
        if len(self.dpt_intermediate_layer_idx) != 4 or not all(
            0 <= i < self.depth for i in self.dpt_intermediate_layer_idx
        ):
            fail("dpt_intermediate_layer_idx", f"must be 4 indices in [0, depth={self.depth})")
        if self.dpt_features % 2:
            fail("dpt_features", "must be even")

    @property
    def head_dim_in(self) -> int:
        """Width of the aggregated tokens the heads read: concat(frame, global)."""
        return 2 * self.embed_dim

    @classmethod
    def tiny(cls, **overrides: Any) -> "VGGTConfig":
        """Tiny model for CPU tests and demos (the sizes of the shared tiny reference fixture).

        DINO patch embed (embed 64, 2 blocks, 4 heads, 5x5 pos-embed grid), 4 frame + 4 global
        blocks with 4 heads, camera trunk of 2 blocks, DPT features 32. About 1.5 M parameters.
        """
        values = dict(
            img_size=70,
            embed_dim=64,
            depth=4,
            num_heads=4,
            dino_depth=2,
            dino_num_heads=4,
            camera_trunk_depth=2,
            camera_num_heads=4,
            dpt_features=32,
            dpt_out_channels=(16, 32, 64, 64),
            dpt_intermediate_layer_idx=(0, 1, 2, 3),
        )
        values.update(overrides)
        return cls.from_dict(values)

    PRESETS = ("vggt1b", "tiny")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "VGGTConfig":
        """Build from a plain dict (e.g. the `model:` section of a YAML config).

        An optional `preset` key ("vggt1b" or "tiny") selects the starting point; the other
        keys override it. Unknown keys raise `UserError` naming the key.
        """
        values = dict(values)
        preset = values.pop("preset", "vggt1b")
        if preset not in cls.PRESETS:
            raise UserError(f"model config key 'preset' = {preset!r}: must be one of {', '.join(cls.PRESETS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise UserError(f"unknown model config key '{key}' (known: {', '.join(sorted(known))})")
        if preset == "tiny":
            return cls.tiny(**values)
        try:
            return cls(**values)
        except TypeError as err:  # e.g. a string where a tuple of ints belongs
            raise UserError(f"invalid model config: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists instead of tuples) that `from_dict` turns back into this config."""
        out = dataclasses.asdict(self)
        out["dpt_out_channels"] = list(self.dpt_out_channels)
        out["dpt_intermediate_layer_idx"] = list(self.dpt_intermediate_layer_idx)
        return out
