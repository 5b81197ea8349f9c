#!/bin/sh
# One-shot (service minio-init): create MLflow's artifact bucket in MinIO if it is missing.
# The bucket stays private; only the mlflow server (with the root credentials) reaches it.
set -eu
for name in MINIO_ROOT_USER MINIO_ROOT_PASSWORD MLFLOW_S3_BUCKET; do
  eval "value=\${$name:-}"
  case "$value" in
    ""|change-me*) echo "error: $name is not set (copy docker/.env.example to docker/.env and set it)" >&2; exit 2 ;;
  esac
done
tries=0
until mc alias set store "${MINIO_ENDPOINT:-http://minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -lt 30 ] || { echo "error: MinIO did not answer" >&2; exit 1; }
  sleep 2
done
mc mb --ignore-existing "store/$MLFLOW_S3_BUCKET"
mc anonymous set none "store/$MLFLOW_S3_BUCKET" >/dev/null
echo "bucket $MLFLOW_S3_BUCKET ready"
