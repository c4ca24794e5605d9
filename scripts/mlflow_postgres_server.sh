#!/usr/bin/env bash
# An MLflow tracking server for cluster searches: runs, params and metrics in PostgreSQL;
# artifacts under one root that the server itself serves (trials on any node upload and download
# through it, so nodes need no shared disk for artifacts).
#
#   createdb -h DBHOST -U mlflow mlflow          # once; the server creates its tables
#   (once: a line DBHOST:5432:mlflow:mlflow:PASSWORD in ~/.pgpass, written in an editor, chmod 600)
#   MLFLOW_PG_URI=postgresql+psycopg2://mlflow@DBHOST:5432/mlflow \
#   MLFLOW_ARTIFACTS=/data/mlflow-artifacts scripts/mlflow_postgres_server.sh [mlflow server args]
#   python tune_mkd.py --preset demo --tracking-uri http://HOST:5000
#
# MLFLOW_HOST (default 127.0.0.1: this machine only) and MLFLOW_PORT (default 5000). For worker
# nodes, bind the head's private IP: the server has no authentication, keep it off public networks.
# Keep the password out of the URI and of every command line (both show in `ps` and shell
# history): libpq reads ~/.pgpass (or $PGPASSFILE). The store reaches MLflow in its environment.
# Name the driver: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the environment has
# psycopg2 (pip install psycopg2-binary).
set -euo pipefail
: "${MLFLOW_PG_URI:?set MLFLOW_PG_URI=postgresql+psycopg2://USER@HOST:PORT/DATABASE}"
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
artifacts=${MLFLOW_ARTIFACTS:-$PWD/mlflow-artifacts}
case "$artifacts" in *://*) ;; *) mkdir -p "$artifacts"; artifacts=$(cd "$artifacts" && pwd) ;; esac
export MLFLOW_BACKEND_STORE_URI=$MLFLOW_PG_URI
exec "$py" -m mlflow server \
    --artifacts-destination "$artifacts" \
    --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" "$@"
