#!/usr/bin/env bash
# Make sure a Docker engine answers: install docker.io when the client or the
# daemon is missing, start dockerd when nothing listens, wait until it is up.
# Idempotent. Exits non-zero with a message when the engine cannot be had.
set -euo pipefail

log() { printf 'start-docker: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  log "engine already running"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  log "no Docker engine answers, and starting one needs root: run this script with sudo," \
      "or start Docker (systemctl start docker) and make sure your user may use it"
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

logfile="${CW_DOCKERD_LOG:-/var/log/cw-dockerd.log}"
if ! pgrep -x dockerd >/dev/null 2>&1; then
  log "starting dockerd (log: $logfile)"
  # containerd is started by dockerd itself when it is not running.
  nohup dockerd >"$logfile" 2>&1 &
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    log "engine is up"
    exit 0
  fi
  sleep 0.5
done

log "the Docker engine did not come up within 60 s; last lines of $logfile:"
tail -n 20 "$logfile" >&2 || true
exit 1
