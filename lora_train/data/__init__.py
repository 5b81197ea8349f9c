"""ETH3D data: COLMAP text models, undistorted views with dense laser depth, multi-view windows,
and synthetic scenes in ETH3D's exact on-disk formats."""

from lora_train.data.colmap import read_cameras, read_images, read_points3d
from lora_train.data.eth3d import ETH3DScene
from lora_train.data.synthetic import write_synthetic_dataset
from lora_train.data.windows import ETH3DWindows, collate_windows

__all__ = [
    "ETH3DScene",
    "ETH3DWindows",
    "collate_windows",
    "read_cameras",
    "read_images",
    "read_points3d",
    "write_synthetic_dataset",
]
