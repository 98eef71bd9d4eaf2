#!/usr/bin/env bash
# Build a local Debian base image with Python, for machines that reach no image
# registry: debootstrap a minimal bookworm, put this machine's CA bundle in it
# (so containers can reach the package registries), and `docker import` it.
#
#   scripts/build-base-image.sh            # build unless the image exists
#   scripts/build-base-image.sh --force    # rebuild
#
# The root file system tarball is cached, so a rebuild takes seconds.
set -euo pipefail

IMAGE="${CW_LOCAL_BASE_IMAGE:-calimero-workflow/base:bookworm}"
SUITE="${CW_BASE_SUITE:-bookworm}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/calimero-workflow"
TARBALL="$CACHE/rootfs-$SUITE.tar"
CA_BUNDLE="${CW_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
force=0
[ "${1:-}" = "--force" ] && force=1

log() { printf 'build-base-image: %s\n' "$*" >&2; }

if [ "$force" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE already exists"
  exit 0
fi

mkdir -p "$CACHE"
if [ "$force" = 1 ] || [ ! -s "$TARBALL" ]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  # Use the mirror apt is configured with on this machine.
  mirror="$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | tr -d ' ' | grep -v -- '-security' | head -n 1 || true)"
  mirror="${CW_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
  log "debootstrap $SUITE from $mirror (about a minute)"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,tini \
    "$SUITE" "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 || {
      log "debootstrap failed; last lines of $CACHE/debootstrap.log:"; tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # This machine's bundle may hold a CA that its network needs (a TLS proxy);
  # Debian's own bundle would not.
  if [ -s "$CA_BUNDLE" ]; then
    cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
  fi
  # Smaller tarball: no package caches, no docs except the copyright files.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/*
  find "$root/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
  tar -C "$root" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

log "importing $IMAGE"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["/bin/sh"]' \
  "$TARBALL" "$IMAGE" >/dev/null
log "built $IMAGE"
