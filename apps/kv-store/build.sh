#!/usr/bin/env bash
# Rebuild kv_store.wasm; the flags live in scripts/build-apps.sh (one place for all apps).
exec "$(dirname "${BASH_SOURCE[0]}")/../../scripts/build-apps.sh" "$@" kv-store
