#!/usr/bin/env bash
# Side-by-side benchmark of meshgate's HTTP planes against nginx, haproxy and a direct connection.
# Installs what it needs from Debian, builds meshgate, and runs bench/http-planes.mjs.
#
#   bench/run.sh                     # 3 repetitions of 10 s per target and scenario
#   REPS=5 DURATION=20 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} …"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts nginx as a service on install; it is not one of ours.
systemctl stop nginx >/dev/null 2>&1 || true

[ -d node_modules ] || npm ci
npm run --silent build
exec node bench/http-planes.mjs "$@"
