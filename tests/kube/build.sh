#!/usr/bin/env bash
# Builds the real Kubernetes node's components from their Go modules, pinned
# by the go.mod/go.sum beside this script:
#   kube        one binary: kube-apiserver, kube-controller-manager,
#               kube-scheduler, kubelet, kube-proxy, etcd (k8s.io/kubernetes v1.37.2 with
#               exactly its own dependency pins; etcd server v3.7.0, the one
#               it requires), with a symlink per component
#   containerd, containerd-shim-runc-v2, ctr, and the CNI plugins bridge,
#               host-local, loopback (containerd/go.mod: its own module, so
#               containerd's newer dependencies never change Kubernetes')
#   helm        the Helm CLI v4.3.1 (helm/go.mod, its own module too), which
#               installs the chart into the guest's node
#   registry    distribution's OCI registry v3.1.2 (registry/: its own module,
#               filesystem storage only), which serves the chart and the
#               driver's images to Helm and containerd in the guest
#   prometheus  Prometheus 3.16.0 (prometheus/: its own module; service
#               discovery: Kubernetes, file and HTTP only), which finds the
#               chart's metrics Services in the guest through the API
#               (Debian's Prometheus 2.42 is built without Kubernetes SD)
# Static (CGO_ENABLED=0), stripped (no DWARF compiled), -trimpath. Into the user's cache
# ($XDG_CACHE_HOME or ~/.cache, under mock-device/kube/<key>), keyed by the
# inputs (go.mod, go.sum, sources, this script, the Go version), linked as
# target/kube/bin: a fresh clone on this machine reuses them (linking them
# anew, even from Go's warm cache, takes minutes) and nothing is rebuilt
# until an input changes. With a directory as $1, into that instead. A cold
# build takes long on 2 cores (measured: see tests/kube/README.md); progress
# is printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# -dwarf=false: no debug information compiled (the linker's -s -w drops it
# anyway); measured cold here, k8s.io/client-go/kubernetes (576 packages)
# compiled in 87 s instead of 105.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -gcflags=all=-dwarf=false"

k8s_version=v1.37.2
containerd_version=v2.4.2

# go build -v names each package it compiles: count them against the total.
# $1: label, $2: module dir, the rest: go build arguments.
build() {
    local label=$1 dir=$2
    shift 2
    local pkgs=("${@: -1}") tags=() prev=
    for a in "$@"; do
        [ "$prev" = -tags ] && tags=(-tags "$a")
        prev=$a
    done
    local total
    total=$(cd "$dir" && go list -deps "${tags[@]}" "${pkgs[@]}" 2>/dev/null | wc -l)
    local start=$SECONDS n=0 last=$SECONDS
    echo "$label: building ($total packages when nothing is cached${cold:+; cold, it takes about $cold on 2 cores})"
    (cd "$dir" && go build -v "$@" 2>&1) | while IFS= read -r line; do
        case $line in
            *" "* | *":"*) echo "$line" ;;  # a compiler message, not a package name
            *)
                n=$((n + 1))
                if ((SECONDS - last >= 20)); then
                    echo "$label: $n/$total packages compiled, $((SECONDS - start)) s"
                    last=$SECONDS
                fi
                ;;
        esac
    done
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "$label: build failed" >&2; return 1; }
    echo "$label: done in $((SECONDS - start)) s"
}

# cached NAME KEY LINK FUNCTION: FUNCTION builds into $out =
# ~/.cache/mock-device/NAME/KEY unless a build of that key is there, one
# build at a time (two clones' test runs); LINK then names it (a directory
# there, from before the cache, goes) and builds of older keys, of no
# further use, are removed.
cached() {
    local name=$1 key=$2 link=$3 fn=$4
    local cache=${XDG_CACHE_HOME:-$HOME/.cache}/mock-device/$name
    out=$cache/$key
    mkdir -p "$cache" "$(dirname "$link")"
    exec 9>"$cache/lock"
    flock 9
    if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$key" ]; then
        echo "$name: up to date ($out)"
    else
        rm -rf "$out"
        mkdir -p "$out"
        local t0=$SECONDS
        "$fn"
        echo "$key" > "$out/.stamp"
        for old in "$cache"/*/; do
            [ "${old%/}" = "$out" ] || rm -rf "$old"
        done
        echo "$name: everything built in $((SECONDS - t0)) s into $out"
    fi
    [ -L "$link" ] || rm -rf "$link"
    ln -sfn "$out" "$link"
}

# kwok v0.8.0 (kwok/go.mod, its own module), with the Stages its users run
# (kwokctl's defaults: nodes Ready at once with a Lease heartbeat, pods
# Running at once), copied from its module into one config file.
build_kwok() {
    cold="6 minutes" build kwok "$here/kwok" -trimpath -o "$out/kwok" -ldflags "-s -w" sigs.k8s.io/kwok/cmd/kwok
    local src
    src=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
        printf -- '---\n'
        cat "$src/$f"
    done > "$out/stages.yaml"
}

build_kube() {
    local cv=k8s.io/component-base/version
    cold="15 minutes" build kube "$here" -trimpath -o "$out/kube" -ldflags "-s -w \
        -X $cv.gitVersion=$k8s_version -X $cv.gitMajor=1 -X $cv.gitMinor=37 \
        -X $cv.gitTreeState=clean -X $cv.buildDate=2026-10-27T12:01:04Z" ./cmd/kube
    for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd; do
        ln -sf kube "$out/$c"
    done

    local cdv=github.com/containerd/containerd/v2/version
    for tool in containerd containerd-shim-runc-v2 ctr; do
        build "$tool" "$here/containerd" -trimpath -tags no_btrfs -o "$out/$tool" \
            -ldflags "-s -w -X $cdv.Version=$containerd_version -X $cdv.Package=github.com/containerd/containerd/v2" \
            "github.com/containerd/containerd/v2/cmd/$tool"
    done
    mkdir -p "$out/cni"
    for p in main/bridge main/loopback ipam/host-local; do
        build "cni ${p#*/}" "$here/containerd" -trimpath -o "$out/cni/${p#*/}" -ldflags "-s -w" \
            "github.com/containernetworking/plugins/plugins/$p"
    done

    local helm_version=v4.3.1
    cold="6 minutes" build helm "$here/helm" -trimpath -o "$out/helm" \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" helm.sh/helm/v4/cmd/helm

    local registry_version=v3.1.2
    cold="3 minutes" build registry "$here/registry" -trimpath -o "$out/registry" \
        -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$registry_version" .

    # Tags: every service discovery left out but Kubernetes' (file and HTTP
    # stay); the web UI's assets are not embedded (the API is all a test uses).
    local prometheus_version=3.16.0 pv=github.com/prometheus/common/version
    cold="8 minutes" build prometheus "$here/prometheus" -trimpath -tags remove_all_sd,enable_kubernetes_sd \
        -o "$out/prometheus" -ldflags "-s -w -X $pv.Version=$prometheus_version -X $pv.Branch=HEAD" \
        github.com/prometheus/prometheus/cmd/prometheus
    ls -l "$out" | awk 'NR > 1 && $1 !~ /^l/ {printf "  %-28s %5.1f MB\n", $9, $5 / 1e6}'
}

# `build.sh kwok`: kwok alone, with its own key (so that adding or changing
# it rebuilds nothing else and `just test`, which never needs it, never
# builds it), linked as target/kube/kwok.
if [ "${1:-}" = kwok ]; then
    key=$( (go version; cat "$0" "$here/kwok/go.mod" "$here/kwok/go.sum") | sha256sum | cut -c1-16)
    cached kwok "$key" "$root/target/kube/kwok" build_kwok
    exit 0
fi

key=$( (go version; cat "$0" "$here/go.mod" "$here/go.sum" "$here/cmd/kube/main.go" \
    "$here/containerd/go.mod" "$here/containerd/go.sum" "$here/helm/go.mod" "$here/helm/go.sum" \
    "$here/registry/go.mod" "$here/registry/go.sum" "$here/registry/main.go" \
    "$here/prometheus/go.mod" "$here/prometheus/go.sum") | sha256sum | cut -c1-16)
if [ -n "${1:-}" ]; then
    out=$1
    if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$key" ]; then
        echo "kube: up to date ($out)"
    else
        mkdir -p "$out"
        build_kube
        echo "$key" > "$out/.stamp"
    fi
else
    cached kube "$key" "$root/target/kube/bin" build_kube
fi
