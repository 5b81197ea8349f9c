"""Standard-library helpers that every package of the project may import (lora_train, tracking,
sweeps), so that each concept lives in one place despite the rule that lora_train and tracking never
import each other: `vggt_common.files` (atomic writes, one inter-process file lock)."""
