#!/bin/sh
# Runs once, when the postgres volume is first initialised (/docker-entrypoint-initdb.d):
# creates MLflow's user-store database beside its backend-store database ($POSTGRES_DB).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v auth_db="$MLFLOW_AUTH_DB" <<'SQL'
SELECT format('CREATE DATABASE %I', :'auth_db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'auth_db')\gexec
SQL
