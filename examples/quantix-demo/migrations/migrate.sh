#!/bin/sh
# Applies the SQL files of this directory in name order, each once.
#   ./migrate.sh up      apply the ones not applied yet
#   ./migrate.sh status  list applied migrations
# The database is $QX_DEMO_STATE/demo.db (default <QX_ROOT>/data/lib/qx-demo). With the sqlite3
# program installed the SQL is executed; without it the migrations are only recorded, so the
# demo runs on any host.
set -eu
STATE_DIR="${QX_DEMO_STATE:-${QX_ROOT:-}/data/lib/qx-demo}"
APPLIED="${STATE_DIR}/migrations.applied"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "${STATE_DIR}"
touch "${APPLIED}"
case "${1:-}" in
  up)
    for sql in "${HERE}"/*.sql; do
      [ -e "${sql}" ] || continue
      name="$(basename "${sql}")"
      if grep -qx "${name}" "${APPLIED}"; then
        continue
      fi
      if command -v sqlite3 >/dev/null 2>&1; then
        sqlite3 "${STATE_DIR}/demo.db" < "${sql}"
      fi
      echo "${name}" >> "${APPLIED}"
      echo "applied ${name}"
    done
    ;;
  status)
    cat "${APPLIED}"
    ;;
  *)
    echo "usage: migrate.sh up|status" >&2
    exit 2
    ;;
esac
