#!/usr/bin/env python3
"""Create (or re-password) the MLflow account that sweeps log with, as the admin.

Reads MLFLOW_TRACKING_URI, the admin credentials from MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD (how every MLflow client authenticates), and the account to create
from MLFLOW_SWEEP_USERNAME / MLFLOW_SWEEP_PASSWORD. Idempotent: run it at every start.
Prints no secret. Exit code 2 on a missing setting, 1 when the server refuses.
"""

import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")  # keep the output to our own lines (mlflow warns on import)

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient


def _setting(name: str) -> str:
    value = os.environ.get(name, "")
    if not value or value.startswith("change-me"):
        print(f"error: {name} is not set (copy docker/.env.example to docker/.env and set it)", file=sys.stderr)
        sys.exit(2)
    return value


def main() -> int:
    tracking_uri = _setting("MLFLOW_TRACKING_URI")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        _setting(name)
    username, password = _setting("MLFLOW_SWEEP_USERNAME"), _setting("MLFLOW_SWEEP_PASSWORD")
    client = AuthServiceClient(tracking_uri)
    for attempt in range(30):  # the server may still be starting
        try:
            try:
                client.get_user(username)
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                client.create_user(username, password)
                print(f"created MLflow user {username!r}")
            else:
                client.update_user_password(username, password)
                print(f"MLflow user {username!r} exists; password set from MLFLOW_SWEEP_PASSWORD")
            return 0
        except MlflowException as err:
            if err.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_PARAMETER_VALUE"):
                print(f"error: {err.error_code}: {err.message.splitlines()[0]}", file=sys.stderr)
                return 1
            print(f"waiting for MLflow at {tracking_uri} ({err.error_code})", file=sys.stderr)
        except OSError as err:
            print(f"waiting for MLflow at {tracking_uri} ({type(err).__name__})", file=sys.stderr)
        time.sleep(2)
    print(f"error: MLflow at {tracking_uri} did not answer", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
