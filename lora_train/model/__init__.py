"""Our own VGGT, checkpoint-compatible with facebookresearch/vggt (without the track head).

Names are imported lazily, so that reading a `VGGTConfig` does not load torch.
"""

from lora_train.lazy import lazy_getattr

_EXPORTS = {
    "VGGT": "lora_train.model.vggt",
    "VGGTConfig": "lora_train.model.config",
    "LoadReport": "lora_train.model.loading",
    "load_pretrained": "lora_train.model.loading",
    "extri_intri_to_pose_encoding": "lora_train.model.pose_encoding",
    "pose_encoding_to_extri_intri": "lora_train.model.pose_encoding",
    "quat_to_mat": "lora_train.model.pose_encoding",
    "mat_to_quat": "lora_train.model.pose_encoding",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(_EXPORTS, __name__)
