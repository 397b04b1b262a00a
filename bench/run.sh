#!/usr/bin/env bash
# Side-by-side benchmarks of meshgate against nginx, haproxy and a direct connection.
# Installs what it needs from Debian, builds meshgate, and runs bench/http-planes.mjs (the webhook,
# debug and kube planes' requests), bench/xds.mjs (the xds plane) and bench/kube-watch.mjs (the kube
# plane's watches), or the one named.
#
#   bench/run.sh                     # both; 3 repetitions each
#   bench/run.sh http                # the HTTP planes only: REPS=5 DURATION=20 bench/run.sh http
#   bench/run.sh xds                 # the xds plane only:   SIZES=1000,5000 PUSH_STREAMS=500 bench/run.sh xds
#   bench/run.sh kube                # kube watches only:    WATCHES=2000 INTERVAL_MS=50 bench/run.sh kube
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
case "${1:-all}" in
  http) node bench/http-planes.mjs ;;
  xds) node bench/xds.mjs ;;
  kube) node bench/kube-watch.mjs ;;
  all) node bench/http-planes.mjs && node bench/xds.mjs && node bench/kube-watch.mjs ;;
  *) echo "usage: bench/run.sh [http|xds|kube|all]" >&2; exit 2 ;;
esac
