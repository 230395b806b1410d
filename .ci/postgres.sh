#!/usr/bin/env bash
# A local PostgreSQL for the tests that need a real one (the audit trail): Debian's package, its `main` cluster,
# a role and database `inferd` / `inferd_test` (password `inferd`) on 127.0.0.1:5432. Idempotent, run as root.
#   .ci/postgres.sh start   install if missing, start, create the role and database; prints the URL
#   .ci/postgres.sh stop    stop the cluster (nothing if it is not running)
set -euo pipefail

ROLE=inferd
PASSWORD=inferd
DATABASE=inferd_test
PORT=5432

version() {
    # The newest server installed under /usr/lib/postgresql/<major>.
    local dirs=(/usr/lib/postgresql/*/bin/postgres)
    [[ -e ${dirs[0]} ]] || return 1
    printf '%s\n' "${dirs[@]}" | sed -E 's#/usr/lib/postgresql/([0-9.]+)/bin/postgres#\1#' | sort -V | tail -n 1
}

as_postgres() {
    runuser -u postgres -- "$@"
}

start() {
    if ! command -v pg_ctlcluster >/dev/null || ! version >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends postgresql
    fi
    local ver
    ver=$(version)
    # The package creates `main`; a machine where that step was skipped gets it here.
    if [[ ! -d /etc/postgresql/$ver/main ]]; then
        pg_createcluster --port "$PORT" "$ver" main
    fi
    if ! pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
        pg_ctlcluster "$ver" main start
    fi
    for _ in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 -p "$PORT" && break
        sleep 0.5
    done
    pg_isready -h 127.0.0.1 -p "$PORT" >&2
    if [[ -z $(as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'") ]]; then
        as_postgres psql -p "$PORT" -q -v ON_ERROR_STOP=1 -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"
    fi
    if [[ -z $(as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'") ]]; then
        as_postgres createdb -p "$PORT" -O "$ROLE" "$DATABASE"
    fi
    echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
}

stop() {
    local ver
    ver=$(version) || return 0
    if pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
        pg_ctlcluster "$ver" main stop
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
