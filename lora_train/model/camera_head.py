"""Camera head: iterative refinement of the 9-d `absT_quaR_FoV` pose encoding."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora_train.model.blocks import Block, Mlp

POSE_ENCODING_DIM = 9  # translation 3, quaternion 4, FoV 2


def activate_pose(pose_enc: torch.Tensor) -> torch.Tensor:
    """Output activations: translation and quaternion linear, FoV ReLU. `[..., 9]` → `[..., 9]`."""
    return torch.cat([pose_enc[..., :7], F.relu(pose_enc[..., 7:])], dim=-1)


class CameraHead(nn.Module):
    """Predicts one pose encoding per frame from the camera tokens of the last aggregator output.

    Each iteration detaches the previous prediction, embeds it, modulates the normalised camera
    tokens with it (adaLN: shift, scale, gate), runs the trunk (attention across frames, one
    token per frame) and adds a predicted delta.

    Args:
        dim_in: width of the aggregated tokens (2 * embed_dim).
        trunk_depth: transformer blocks in the trunk.
        num_heads: attention heads of the trunk.
        mlp_ratio: MLP hidden width / dim_in in the trunk.
        init_values: LayerScale init of the trunk.
        num_iterations: refinement iterations.
    """

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        num_iterations: int = 4,
    ):
        super().__init__()
        self.num_iterations = num_iterations
        self.trunk = nn.Sequential(*(Block(dim_in, num_heads, mlp_ratio, init_values) for _ in range(trunk_depth)))
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_ENCODING_DIM)

    def forward(self, aggregated_tokens_list: list[torch.Tensor]) -> list[torch.Tensor]:
        """Args:
            aggregated_tokens_list: aggregator outputs, each `[B, S, P, dim_in]`; only the last
                one's camera token (index 0) is used.

        Returns:
            `num_iterations` activated pose encodings `[B, S, 9]`, the last one the final estimate.
            Each is the detached previous estimate plus a delta, so a loss on iteration i
            back-propagates only through iteration i.
        """
        pose_tokens = self.token_norm(aggregated_tokens_list[-1][:, :, 0])
        batch, num_frames, _ = pose_tokens.shape
        pred = None
        predictions = []
        for _ in range(self.num_iterations):
            if pred is None:
                conditioning = self.embed_pose(self.empty_pose_tokens.expand(batch, num_frames, -1))
            else:
                pred = pred.detach()  # no backprop through iterations, also not via the running sum
                conditioning = self.embed_pose(pred)
            shift, scale, gate = self.poseLN_modulation(conditioning).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(pose_tokens) * (1 + scale) + shift) + pose_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            pred = delta if pred is None else pred + delta
            predictions.append(activate_pose(pred))
        return predictions
