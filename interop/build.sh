#!/usr/bin/env bash
# Builds the real Istio and Kubernetes programs that `npm run test:interop` runs, from the Go
# module proxy, into .interop/bin (ignored by git). Every version is pinned here or in the wrapper
# modules' go.mod and go.sum. A second run with nothing changed returns at once; after a change,
# Go's own build cache makes it a matter of linking.
#
#   etcd                      go.etcd.io/etcd/server/v3           (wrapper module interop/etcd: its go.mod has replace lines)
#   kube-apiserver, kubectl   k8s.io/kubernetes                   (wrapper module interop/kube: staging modules at their published version)
#   pilot-discovery (istiod), pilot-agent, istioctl, echo server  istio.io/istio, one version for all
set -euo pipefail
cd "$(dirname "$0")/.."

ISTIO_VERSION=v0.0.0-20260827124520-eed52ebb66ad
ISTIO_BUILD_VERSION=1.32-dev
KUBE_VERSION=v1.37.2

export GOTOOLCHAIN=local GOFLAGS=-modcacherw
bin="$PWD/.interop/bin"
mkdir -p "$bin"

programs=(etcd kube-apiserver kubectl pilot-discovery pilot-agent istioctl echo-server)
stamp="$bin/.built"
inputs="$(go version) $(cat interop/build.sh interop/etcd/go.mod interop/etcd/go.sum interop/kube/go.mod interop/kube/go.sum | sha256sum)"
all_there=1
for p in "${programs[@]}"; do [ -x "$bin/$p" ] || all_there=0; done
if [ "$all_there" = 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
  echo "interop: fixtures up to date in .interop/bin"
  exit 0
fi
rm -f "$stamp"

step() { printf 'interop: %-44s' "$1"; local t0=$SECONDS; shift; "$@"; echo " ${SECONDS}s since start ($((SECONDS - t0))s)"; }

build_etcd() { (cd interop/etcd && go build -o "$bin/etcd" go.etcd.io/etcd/server/v3); }

build_kube() {
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local ldflags="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  (cd interop/kube && go build -ldflags "$ldflags" -o "$bin/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)
}

build_istio() {
  local v=$ISTIO_VERSION
  # istio.io/istio has no replace lines, so `go install module@version` pins it, with go.sum checked.
  GOBIN="$bin" go install -ldflags "-X istio.io/istio/pkg/version.buildVersion=$ISTIO_BUILD_VERSION" \
    "istio.io/istio/pilot/cmd/pilot-discovery@$v" "istio.io/istio/pilot/cmd/pilot-agent@$v" \
    "istio.io/istio/istioctl/cmd/istioctl@$v" "istio.io/istio/pkg/test/echo/cmd/server@$v"
  mv -f "$bin/server" "$bin/echo-server"
}

step "etcd $(grep -m1 'go.etcd.io/etcd/server/v3 ' interop/etcd/go.mod | awk '{print $2}')" build_etcd
step "kube-apiserver, kubectl $KUBE_VERSION" build_kube
step "istiod, pilot-agent, istioctl, echo ${ISTIO_VERSION##*-}" build_istio

echo "$inputs" >"$stamp"
echo "interop: fixtures built in .interop/bin in ${SECONDS}s"
