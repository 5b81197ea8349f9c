"""Experiment tracking on a real MLflow server: server lifecycle, run layout, batched logger, comparison.

Modules: `server` (start/stop/reuse an `mlflow server`), `runs` (parent/child run layout, registry),
`logger` (batched, asynchronous, spooling metric logger used inside trials), `compare`
(leaderboard and plots), `params` (dotted-name flattening and MLflow batch limits).
"""

from tracking.errors import TrackingError

__all__ = ["TrackingError"]
