"""The sweep service: space file, Optuna search under ASHA on Ray Tune/Train, MLflow tracking."""
