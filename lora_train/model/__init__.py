"""Our own VGGT, checkpoint-compatible with facebookresearch/vggt (without the track head)."""

from lora_train.model.config import VGGTConfig
from lora_train.model.loading import LoadReport, load_pretrained
from lora_train.model.pose_encoding import (
    extri_intri_to_pose_encoding,
    mat_to_quat,
    pose_encoding_to_extri_intri,
    quat_to_mat,
)
from lora_train.model.vggt import VGGT

__all__ = [
    "VGGT",
    "VGGTConfig",
    "LoadReport",
    "load_pretrained",
    "extri_intri_to_pose_encoding",
    "pose_encoding_to_extri_intri",
    "quat_to_mat",
    "mat_to_quat",
]
