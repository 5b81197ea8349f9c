"""LoRA fine-tuning of VGGT on ETH3D: model, data, LoRA, losses, training loop, evaluation.

This package never imports ray, mlflow or optuna: it is usable alone (python / torchrun).
"""
