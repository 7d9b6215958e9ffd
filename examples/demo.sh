#!/bin/sh
# The demo: load examples/catalog.json into a fresh SQLite file and print the catalog.
set -eu
DEMO_DIR=${DEMO_DIR:-demo}
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
export METERSYNC_DATABASE_URL="sqlite:///$DEMO_DIR/metersync.db"
export METERSYNC_LOG_FORMAT=console

echo "== metersync import examples/catalog.json"
metersync import examples/catalog.json
echo
echo "== metersync import examples/catalog.json (again: nothing changes)"
metersync import examples/catalog.json
echo
echo "== metersync customers list"
metersync customers list
echo
echo "== metersync subjects list"
metersync subjects list
echo
echo "== metersync customers get acme --json"
metersync customers get acme --json
echo
echo "Database: $DEMO_DIR/metersync.db (try: METERSYNC_DATABASE_URL=$METERSYNC_DATABASE_URL metersync customers list)"
