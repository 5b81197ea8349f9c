"""ETH3D data: COLMAP text models, undistorted views with dense laser depth, multi-view windows,
and synthetic scenes in ETH3D's exact on-disk formats.

Names are imported lazily so that `python -m lora_train.data.synthetic` does not load torch.
"""

from lora_train.lazy import lazy_getattr

_EXPORTS = {
    "ETH3DScene": "lora_train.data.eth3d",
    "ETH3DWindows": "lora_train.data.windows",
    "collate_windows": "lora_train.data.windows",
    "read_cameras": "lora_train.data.colmap",
    "read_images": "lora_train.data.colmap",
    "read_points3d": "lora_train.data.colmap",
    "write_synthetic_dataset": "lora_train.data.synthetic",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(_EXPORTS, __name__)
