#!/bin/sh
# Captured values arrive as upper-case variables; arguments as $1.
set -eu
test "$APP_FOR_CALIMERO_NODE_1" = "$1"
test -n "$APP_ID_CALIMERO_NODE_2"
test -f "$CW_RESULTS_FILE"
echo "ok $1"
