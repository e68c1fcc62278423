# mock-device tasks. On a fresh machine, use ./dev <recipe>: it installs what
# is missing first. Recipes that boot a VM say so in their name.

export RUST_BACKTRACE := "0"

# The agent's features (agent/Cargo.toml): test builds compile its
# test-only faults in (release builds never do); what runs in the guests
# has its eBPF probes (they need bpf-linker; the host tests do not).
test_features := "--features mock-accel-agent/failpoints"
guest_features := "--features mock-accel-agent/failpoints,mock-accel-agent/ebpf"

kver := `ls /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V | tail -n 1`

# List the recipes
[private]
default:
    @just --list --unsorted

# Every test: unit and host tests, the real control plane's, the guests (the module on Debian's kernels, the agent, the real node from its saved state); nextest, each test with a deadline (the sanitizing kernel's runs: just kmod-sanitize)
test:
    @command -v bpf-linker >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/bpf-linker" ] || { echo "bpf-linker is missing: the guests need the agent's eBPF probes (./dev setup installs it)" >&2; exit 1; }
    @just builds image
    ./target/debug/guest accel
    cargo nextest run --workspace {{guest_features}}
    cargo test --workspace --doc -q {{guest_features}}

# The contributor's loop: unit tests, host integration tests and the real control plane on the host (no guest, no release build, no eBPF toolchain needed); ends with nextest's summary
test-fast:
    @just builds
    cargo nextest run --workspace --profile fast {{test_features}}

# What the tests run: Kubernetes and its neighbours (Go, `just kube`) built beside the workspace and its tests (Rust) and, with `image`, the agent the guests' driver image carries (`just agent-image`). Each leaves a core idle at times (a link, the one crate or package the rest waits for), which the other fills: cold here (2 cores), 21 to 23 minutes together, about one less than one after the other
[private]
builds image="":
    #!/usr/bin/env bash
    set -euo pipefail
    set -m   # the Go build in a process group of its own: stopped whole if a Rust build fails
    bash tests/kube/build.sh & kube=$!
    trap 'kill -- -$kube 2>/dev/null || true' EXIT
    features="{{test_features}}"
    if [ "{{image}}" = image ]; then just agent-image; features="{{guest_features}}"; fi
    cargo build --workspace --bins $features
    cargo test --workspace --no-run -q $features
    wait $kube || { echo "just kube failed (above)" >&2; exit 1; }
    trap - EXIT

# Build the real Kubernetes v1.37.2 components, etcd, containerd, CNI plugins and the Helm v4.3.1 CLI from their Go modules (tests/kube; cold: long, progress shown; nothing when up to date)
kube:
    bash tests/kube/build.sh

# Build the sanitizing guest kernel (KASAN, lockdep, kmemleak, UBSAN, debugobjects, list debugging) from Debian's 6.12 source (tests/debug-kernel; cold: ~6 min on 2 cores, progress shown; cached, nothing when up to date)
debug-kernel:
    bash tests/debug-kernel/build.sh

# The module on the sanitizing kernel (which `just test` leaves out: ~10 minutes of a cold run): every scenario of the module's guest tests on Debian's kernels and on it, then the long random-operations stress on it, two vCPUs (default 900 s); 0 reports expected
kmod-sanitize seconds="900": debug-kernel build
    MOCK_KMOD_SANITIZING=1 cargo nextest run -p mock-device-testkit --test kmod_guest
    MOCK_GUEST_KERNEL=sanitizing MOCK_GUEST_TIMEOUT=$(({{seconds}} + 300)) ./target/debug/guest --cpus 2 run --set STRESS_SECONDS={{seconds}} tests/scenarios/kmod_sanitize.sh

# The agent the driver's image carries in the guests (node::image_agent): the release profile at opt-level 1 (Cargo.toml: guest-image; 394 s cold here, 540 at opt-level 3)
agent-image:
    cargo build --profile guest-image -p mock-accel-agent --bin mock-accel-agent --features failpoints,ebpf

# Build the Rust workspace (agent, test API server, rig and in-guest tools), as the tests use it
build:
    cargo build --workspace --bins {{guest_features}}

# Container images as OCI archives, without an engine: the test node's (pause, busybox) and the driver's (the agent, the KMM module per installed kernel): target/images/*.tar
images:
    cargo build --release -q -p mock-accel-agent --bin mock-accel-agent --features ebpf
    cargo run -q -p mock-device-testkit --bin images

# Build the module against the installed guest kernel (kmod/mock-accel.ko)
kmod:
    make -C kmod KDIR=/lib/modules/{{kver}}/build modules

# Build the module with W=1 warnings and the sparse checker
kmod-check:
    make -C kmod KDIR=/lib/modules/{{kver}}/build check

# Remove the module's build products
kmod-clean:
    make -C kmod KDIR=/lib/modules/{{kver}}/build clean

# The demo: a real Kubernetes v1.37.2 node in a VM (first run builds Kubernetes: ~10 min), the driver installed with Helm from a registry in the VM, the seed's test pod, a waiting pod placed after a hot-plug
vm-demo: kube build agent-image
    cargo run -q -p mock-device-testkit --bin guest -- demo

# The quick demo: the module, the agent and the project's test API server in a VM; devices hot-plugged, slices shown changing
vm-demo-lite: build
    cargo run -q -p mock-device-testkit --bin guest -- demo-lite

# Boot a VM with the module installed and give me its shell (Ctrl-A X quits)
vm-shell: build
    cargo run -q -p mock-device-testkit --bin guest -- shell

# Boot a VM and run a scenario script in it (e.g. tests/scenarios/hotplug.sh)
vm-run script: build
    cargo run -q -p mock-device-testkit --bin guest -- run {{script}}

# Every benchmark: the kubelet plugin's prepare/unprepare latency, the controller at scale, the shared counters' write cost, then the VM benchmarks
bench: bench-plugin bench-controller bench-counters bench-sim bench-fleet bench-vm bench-cluster

# NodePrepareResources/NodeUnprepareResources p50/p99 (1- and 8-device claims), release build
bench-plugin:
    cargo run --release -q -p mock-accel-agent --example bench_plugin

# ResourceSlice writes per sriov_numvfs change and per PF hot-plug, shared counters off (baseline) and on, counted by the real kube-apiserver (release)
bench-counters: kube
    cargo run --release -q -p mock-accel-agent --example bench_counters

# The user-space sim (--devices=sim) against the real kube-apiserver on the host, release: device change -> slice p50/p99 against the same run's bare write of the same slice (ratio), agent RSS with 64 devices in sim and kernel mode (BENCH_CHANGES, default 200)
bench-sim: kube
    cargo build --release -q -p mock-accel-agent --bin mock-accel-agent
    cargo run --release -q -p mock-accel-agent --example bench_sim

# --mode=fleet with kwok against the real kube-apiserver on the host, release: BENCH_NODES (1000) nodes x 36 devices from start to all published (writes, API server CPU per node), BENCH_IDLE_SECONDS (600) idle (writes, Leases), BENCH_DYNAMICS_SECONDS (120) of declared failures, recoveries and hot-plugs against the same run's bare slice write (ratio)
bench-fleet: kube
    bash tests/kube/build.sh kwok
    cargo build --release -q -p mock-accel-agent --bin mock-accel-agent
    cargo run --release -q -p mock-accel-agent --example bench_fleet

# The controller at fleet scale (BENCH_NODES, default 500): start to full view, /metrics cost, Node deleted -> slice deleted, idle API load
bench-controller:
    cargo run --release -q -p mock-accel-agent --example bench_controller

# Benchmarks in a VM with release builds: event->slice latency p50/p99, idle API load, storm writes
bench-vm:
    cargo build --release --workspace --bins --features mock-accel-agent/ebpf
    MOCK_GUEST_TIMEOUT=1200 ./target/release/guest run tests/scenarios/bench.sh

# The driver on the real Kubernetes node in a VM, release builds: API write cost (a ConfigMap, one slice, the agent's writes made bare; before and after), event->slice (ratios) and where its time goes step by step, with and without shared counters, hot-plug->pod Running split, the kubelet's prepare metrics, idle API load
bench-cluster: kube
    cargo build --release --workspace --bins --features mock-accel-agent/ebpf
    ./target/release/guest --node run tests/scenarios/bench_cluster.sh

# Fuzz the agent's parsers (uevents, device names, durations, the checkpoint, CDI specs, eBPF records) with libFuzzer, each for `seconds`: executions, coverage, crashes; the corpus kept in fuzz/corpus (just test replays it)
fuzz seconds="60":
    bash fuzz/run.sh {{seconds}}

# The fault suite (boots VMs): the agent SIGKILLed at each step of prepare/unprepare, full directories, the API down, unplug and rmmod under a claim, health flapping for `flap` seconds, lost uevents (faults.sh); then on the real node the kubelet retrying after those kills, the kubelet killed mid-prepare, etcd stopped 30 s, kube-apiserver restarted (faults_node.sh); tables of what was done, the outcome, what was lost
faults flap="60": kube build
    MOCK_FAULTS_ALL=1 MOCK_FAULTS_FLAP_SECONDS={{flap}} cargo test -p mock-accel-agent --features failpoints,ebpf --test agent_guest -- --exact the_agent_loses_nothing_under_faults --nocapture
    cargo test -p mock-accel-agent --features failpoints,ebpf --test node_guest -- --ignored --exact the_agent_loses_nothing_under_faults_on_a_real_node --nocapture

# The user-space sim (devices.mode=sim) on the real Kubernetes node in a VM, the module not loaded: the chart under its least privileges, the seed's commands through binding conditions, hot-plug and health through `mock-accel-agent ctl` (tests/scenarios/sim_node.sh)
sim-node: kube
    @just builds image
    cargo test -p mock-accel-agent --features failpoints,ebpf --test node_guest -- --ignored --exact the_sim_on_a_real_node --nocapture

# DeviceScenarios on the real node (tests/scenarios/declared.sh), in sim and kernel mode: admission, NotRealisable, a declared hot-plug with an attach delay, a declared failure and recovery, scheduled faults and their lateness
declared-node: kube
    @just builds image
    cargo test -p mock-accel-agent --features failpoints,ebpf --test node_guest -- --ignored --exact the_declared_devices_on_a_real_node --nocapture

# Three nodes on one kernel, kind's way, in the node VM (tests/scenarios/shared_nodes.sh): two more kubelets in namespaces of their own beside the node's, the chart with devices.sharedKernel, 10 claims placed by the real scheduler, a hot-plug and a fault on one node, an agent killed, a node gone; what each node costs the guest
shared-nodes: kube
    @just builds image
    cargo test -p mock-accel-agent --features failpoints,ebpf --test node_guest -- --ignored --exact nodes_sharing_a_kernel_with_the_real_scheduler --nocapture

# The soak (tests/scenarios/soak.sh, boots a VM, the image's agent: just agent-image): `hotplugs` hot-plug cycles beside `claims` claim cycles; RSS, descriptors and writes per change printed, leaks checked
soak hotplugs="1000" claims="200": build agent-image
    MOCK_SOAK_HOTPLUGS={{hotplugs}} MOCK_SOAK_CLAIMS={{claims}} cargo test -p mock-accel-agent --features failpoints,ebpf --test agent_guest -- --exact the_agent_soaks_hotplugs_and_claims --nocapture

# Formatting, clippy with warnings as errors, the module's static checks, the chart (real Helm, official schemas) and promtool on both components' metrics
lint: kmod-check chart-check
    cargo fmt --all --check
    cargo clippy --workspace --all-targets {{test_features}} -- -D warnings
    cargo clippy -p mock-accel-agent --all-targets -- -D warnings
    cargo test -q -p mock-accel-agent --features failpoints --test agent_api metrics_pass_promtool
    cargo test -q -p mock-accel-agent --features failpoints --test controller_api the_controller_follows_the_cluster_and_cleans_up

# The Helm chart: lint, every seed command rendered and validated (Kubernetes 1.34-1.37), schema refusals, dashboards in sync
chart-check:
    cargo build -q -p mock-accel-agent --bin mock-accel-agent --features failpoints
    python3 tests/chart/check_chart.py

# Copy dashboards/*.json (the source) into the chart (Helm reads only inside it)
dashboards-sync:
    cp dashboards/*.json chart/dashboards/

# Every test many times (FLAKE_HOST_RUNS=20 host, FLAKE_GUEST_RUNS=3 guest) with one core kept busy; each test's failure count
flake-hunt: kube
    python3 scripts/flake_hunt.py
