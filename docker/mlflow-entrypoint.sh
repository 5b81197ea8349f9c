#!/usr/bin/env bash
# Entrypoint of the mlflow image: the tracking server behind basic-auth, runs in Postgres,
# artifacts proxied (--serve-artifacts) to the S3 bucket in MinIO.
# Extra arguments are appended to `mlflow server`.
set -euo pipefail

require() {  # refuse to start without a real value (empty or the .env.example placeholder)
  local name=$1 value=${!1:-}
  if [[ -z "$value" || "$value" == change-me* ]]; then
    echo "error: $name is not set (copy docker/.env.example to docker/.env and set it)" >&2
    exit 2
  fi
}
for name in POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB POSTGRES_HOST MLFLOW_AUTH_DB \
            MLFLOW_S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY MLFLOW_S3_ENDPOINT_URL \
            MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
  require "$name"
done

pg() {  # postgresql:// URI of one database; credentials URL-encoded
  python - "$1" <<'EOF'
import os, sys
from urllib.parse import quote
user, password = (quote(os.environ[k], safe="") for k in ("POSTGRES_USER", "POSTGRES_PASSWORD"))
print(f"postgresql://{user}:{password}@{os.environ['POSTGRES_HOST']}:{os.environ.get('POSTGRES_PORT', '5432')}/{sys.argv[1]}")
EOF
}

# The user store lives in its own database (created by docker/postgres-init.sh). The admin
# account comes from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (read by MLflow
# itself), so no password is written to disk.
umask 077
export MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-$HOME/basic_auth.ini}
auth_db_uri=$(pg "$MLFLOW_AUTH_DB")
# MLflow reads the file with configparser interpolation: a literal % (URL-encoded password) is %%.
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${auth_db_uri//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF

# Host headers accepted: the compose service name and loopback (any port) plus the operator's.
allowed_hosts="mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
if [[ -n "${MLFLOW_EXTRA_ALLOWED_HOSTS:-}" ]]; then
  allowed_hosts="$allowed_hosts,$MLFLOW_EXTRA_ALLOWED_HOSTS"
fi

# 0.0.0.0 inside the container network only; compose publishes the port on BIND_ADDRESS.
exec mlflow server \
  --host 0.0.0.0 --port 5000 --workers "${MLFLOW_WORKERS:-4}" \
  --app-name basic-auth \
  --allowed-hosts "$allowed_hosts" \
  --backend-store-uri "$(pg "$POSTGRES_DB")" \
  --serve-artifacts --artifacts-destination "s3://${MLFLOW_S3_BUCKET}/" \
  "$@"
