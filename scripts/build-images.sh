#!/usr/bin/env bash
# Build the project's images: the merod-compatible node image and, when the
# repository has one, the action image. Without a reachable registry the
# images are built on a local debootstrap base (scripts/build-base-image.sh).
#
#   scripts/build-images.sh               # choose the base automatically
#   CW_BASE_IMAGE=python:3.11-slim scripts/build-images.sh
#   CW_NODE_IMAGE=me/node:dev CW_ACTION_IMAGE=me/action:dev scripts/build-images.sh
#
# CW_NODE_IMAGE and CW_ACTION_IMAGE set the tags (the tests read the same
# variables), so a checkout can test its own images while others use theirs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'build-images: %s\n' "$*" >&2; }

PUBLIC_BASE="python:3.11-slim"
LOCAL_BASE="${CW_LOCAL_BASE_IMAGE:-calimero-workflow/base:bookworm}"
NODE_IMAGE="${CW_NODE_IMAGE:-calimero-workflow/node:dev}"
ACTION_IMAGE="${CW_ACTION_IMAGE:-calimero-workflow/action:dev}"

base="${CW_BASE_IMAGE:-}"
if [ "$base" = "$LOCAL_BASE" ]; then
  bash scripts/build-base-image.sh
elif [ -z "$base" ]; then
  if docker image inspect "$PUBLIC_BASE" >/dev/null 2>&1 \
     || timeout 30 docker pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
    base="$PUBLIC_BASE"
  else
    log "no registry reachable for $PUBLIC_BASE; using the local base image"
    bash scripts/build-base-image.sh
    base="$LOCAL_BASE"
  fi
fi
log "base image: $base"

build() {
  local tag=$1 file=$2
  log "building $tag from $file"
  local out
  out="$(mktemp)"
  if ! DOCKER_BUILDKIT=0 docker build -f "$file" --build-arg "BASE_IMAGE=$base" -t "$tag" . >"$out" 2>&1; then
    tail -n 40 "$out" >&2
    rm -f "$out"
    log "building $tag failed"
    exit 1
  fi
  rm -f "$out"
}

build "$NODE_IMAGE" docker/node.Dockerfile
# The action image (the repository's Dockerfile, built the same way).
if [ -f Dockerfile ]; then
  build "$ACTION_IMAGE" Dockerfile
fi
log "done"
