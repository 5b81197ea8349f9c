"""DPT head: dense per-pixel prediction (depth or point map plus confidence) from tokens."""

import torch
import torch.nn as nn
import torch.nn.functional as F

_MAX_INTERPOLATE_ELEMENTS = 1_610_612_736  # larger outputs overflow F.interpolate's int32 indexing


def interpolate(x: torch.Tensor, size=None, scale_factor=None) -> torch.Tensor:
    """Bilinear, align_corners=True resize of `[N, C, H, W]`, chunked over N for huge outputs."""
    if size is None:
        size = (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
    size = tuple(int(s) for s in size)
    output_elements = x.shape[0] * x.shape[1] * size[0] * size[1]
    if output_elements <= _MAX_INTERPOLATE_ELEMENTS or x.shape[0] == 1:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    num_chunks = -(-output_elements // _MAX_INTERPOLATE_ELEMENTS)
    return torch.cat(
        [F.interpolate(part, size=size, mode="bilinear", align_corners=True) for part in x.chunk(num_chunks)]
    )


def uv_grid(width: int, height: int, aspect_ratio: float, dtype, device) -> torch.Tensor:
    """Pixel-centre coordinates normalised by the image diagonal.

    x spans ±ar/√(ar²+1)·(width−1)/width, y spans ±1/√(ar²+1)·(height−1)/height.

    Returns:
        `[height, width, 2]` (x, y).
    """
    diagonal = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diagonal, 1.0 / diagonal
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype, device=device)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack((grid_x, grid_y), dim=-1)


def sincos_embed(values: torch.Tensor, dim: int, omega_0: float = 100.0) -> torch.Tensor:
    """Sin/cos embedding of scalars with frequencies `1 / omega_0 ** (k / (dim/2))`, in float64.

    Args:
        values: `[N]`.
        dim: output width (even).

    Returns:
        `[N, dim]` float32: sin half, then cos half.
    """
    dtype = torch.float32 if values.device.type == "mps" else torch.float64
    omega = torch.arange(dim // 2, dtype=dtype, device=values.device) / (dim / 2.0)
    omega = 1.0 / omega_0**omega
    angles = values.reshape(-1, 1).to(dtype) * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def uv_position_embedding(height: int, width: int, channels: int, aspect_ratio: float, dtype, device) -> torch.Tensor:
    """Sin/cos embedding of the uv grid: x in the first half of the channels, y in the second.

    Returns:
        `[channels, height, width]`.
    """
    grid = uv_grid(width, height, aspect_ratio, dtype, device).reshape(-1, 2)
    embed = torch.cat([sincos_embed(grid[:, 0], channels // 2), sincos_embed(grid[:, 1], channels // 2)], dim=-1)
    return embed.reshape(height, width, channels).permute(2, 0, 1)


def activate_head(out: torch.Tensor, activation: str, conf_activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the last channel off as confidence and apply the output activations.

    Args:
        out: `[N, C, H, W]` raw head output.
        activation: "exp" (depth), "inv_log" (points: sign(y)·expm1(|y|)) or "linear".
        conf_activation: "expp1" (1 + exp) or "expp0" (exp).

    Returns:
        values `[N, H, W, C-1]` and confidence `[N, H, W]`.
    """
    fmap = out.permute(0, 2, 3, 1)
    values, conf = fmap[..., :-1], fmap[..., -1]
    if activation == "exp":
        values = torch.exp(values)
    elif activation == "inv_log":
        values = torch.sign(values) * torch.expm1(torch.abs(values))
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r}")
    if conf_activation == "expp1":
        conf = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf = conf.exp()
    else:
        raise ValueError(f"unknown conf_activation {conf_activation!r}")
    return values, conf


class ResidualConvUnit(nn.Module):
    """`conv2(relu(conv1(relu(x)))) + relu(x)`.

    The residual is relu(x), not x: the reference implementation applies an in-place ReLU to
    its input before the residual add, and the pretrained weights depend on it.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """Fuses the running output with one skip level, then upsamples (bilinear, align_corners).

    Args:
        features: channels.
        has_residual: whether there is a skip input (False for the coarsest level).
    """

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        """Args:
            x: `[N, F, h, w]` running output.
            skip: `[N, F, h, w]` skip level (when has_residual).
            size: output (H, W); None doubles the resolution.

        Returns:
            `[N, F, H, W]`.
        """
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = interpolate(x, size=size, scale_factor=None if size is not None else 2)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Dense prediction head over 4 aggregator outputs (DPT).

    Args:
        dim_in: width of the aggregated tokens (2 * embed_dim).
        patch_size: pixels per patch side.
        output_dim: output channels including the confidence channel (2 depth, 4 points).
        activation: activation of the value channels ("exp" or "inv_log").
        conf_activation: activation of the confidence channel ("expp1").
        features: fusion width.
        out_channels: per-level projection widths.
        intermediate_layer_idx: which aggregator outputs feed the 4 levels.
        frames_chunk_size: frames processed at once (bounds memory, same result).
    """

    def __init__(
        self,
        dim_in: int = 2048,
        patch_size: int = 14,
        output_dim: int = 2,
        activation: str = "exp",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024),
        intermediate_layer_idx: tuple[int, int, int, int] = (4, 11, 17, 23),
        frames_chunk_size: int = 8,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.intermediate_layer_idx = tuple(intermediate_layer_idx)
        self.frames_chunk_size = frames_chunk_size

        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, channels, kernel_size=1) for channels in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for level, channels in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{level}_rn", nn.Conv2d(channels, features, kernel_size=3, padding=1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, output_dim, kernel_size=1),
        )

    def _add_pos_embed(self, x: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Add the 0.1-scaled uv sin/cos embedding for an image of `height x width` pixels."""
        embed = uv_position_embedding(x.shape[-2], x.shape[-1], x.shape[1], width / height, x.dtype, x.device)
        return x + 0.1 * embed[None]

    def _fuse(self, levels: list[torch.Tensor]) -> torch.Tensor:
        scratch = self.scratch
        l1, l2, l3, l4 = (getattr(scratch, f"layer{i}_rn")(x) for i, x in enumerate(levels, start=1))
        out = scratch.refinenet4(l4, size=l3.shape[2:])
        out = scratch.refinenet3(out, l3, size=l2.shape[2:])
        out = scratch.refinenet2(out, l2, size=l1.shape[2:])
        out = scratch.refinenet1(out, l1)
        return scratch.output_conv1(out)

    def _forward_frames(self, tokens_list, height: int, width: int, patch_start_idx: int, frames: slice):
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        levels = []
        for project, resize, layer_idx in zip(self.projects, self.resize_layers, self.intermediate_layer_idx):
            x = tokens_list[layer_idx][:, frames, patch_start_idx:]
            batch, num_frames = x.shape[:2]
            x = self.norm(x.reshape(batch * num_frames, -1, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(batch * num_frames, -1, grid_h, grid_w)
            x = self._add_pos_embed(project(x), width, height)
            levels.append(resize(x))
        out = interpolate(self._fuse(levels), size=(grid_h * self.patch_size, grid_w * self.patch_size))
        out = self.scratch.output_conv2(self._add_pos_embed(out, width, height))
        values, conf = activate_head(out, self.activation, self.conf_activation)
        return values.reshape(batch, num_frames, *values.shape[1:]), conf.reshape(batch, num_frames, *conf.shape[1:])

    def forward(
        self, aggregated_tokens_list: list[torch.Tensor], images: torch.Tensor, patch_start_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            aggregated_tokens_list: aggregator outputs, each `[B, S, P, dim_in]`.
            images: `[B, S, 3, H, W]` (only its size is used).
            patch_start_idx: index of the first patch token.

        Returns:
            values `[B, S, H, W, output_dim - 1]` and confidence `[B, S, H, W]`.
        """
        num_frames = images.shape[1]
        height, width = images.shape[-2:]
        chunk = self.frames_chunk_size
        if chunk >= num_frames:
            return self._forward_frames(aggregated_tokens_list, height, width, patch_start_idx, slice(None))
        parts = [
            self._forward_frames(aggregated_tokens_list, height, width, patch_start_idx, slice(start, start + chunk))
            for start in range(0, num_frames, chunk)
        ]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)
