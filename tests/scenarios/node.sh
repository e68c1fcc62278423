# The real Kubernetes node in the guest, sourced after lib.sh:
#   node_up     makes the node's certificates, starts etcd, kube-apiserver,
#               kube-controller-manager, kube-scheduler, containerd (test
#               images imported) and the kubelet; waits until the Node is
#               Ready; prints the timings. In a guest resumed from its saved
#               state (tests/src/snapshot.rs: the rig saved it after
#               node_up, registry_up and node_saved) it finds the node up
#               and checks it instead (node_resumed)
#   node_logs   each component's error lines and last lines (for failures)
#   node_ready  the Node's Ready condition is True
#   registry_up starts the OCI registry, pushes the chart
#               and the driver's image to it
#   and the scenarios' helpers on the node's objects (jp, devices, phase,
#   running, ...) and on the agent run as a node process (start_agent,
#   metric, registered)
# The host wrote the configuration files and command lines
# (/guest/node.env): tests/src/node.rs; node_up has `guest-tool
# node-secrets` make the certificates and kubeconfigs in the guest, so the
# saved node is the same from run to run and only its state file holds them.
. /guest/node.env
LOGS=/var/log/kube

# Every kubectl call bounded (a delete waiting on a finalizer, an exec
# whose stream never ends): a hang fails a check and the scenario goes on
# to say what happened, instead of running into the guest's deadline with
# nothing said. (Once, cluster.sh ran 1500 s into it, where it takes 330.)
_kubectl=$(command -v kubectl)
kubectl() { timeout 300 "$_kubectl" "$@"; }

uptime_s() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }

# start NAME COMMAND...: COMMAND in the background, its output in
# $LOGS/NAME.log, its PID in $LOGS/NAME.pid
start() {
    _n=$1; shift
    "$@" >"$LOGS/$_n.log" 2>&1 &
    echo $! >"$LOGS/$_n.pid"
}

# stop NAME: SIGTERM, then SIGKILL after 20 s; waits until it has gone
stop() {
    _p=$(cat "$LOGS/$1.pid")
    kill "$_p" 2>/dev/null
    wait_until 20 gone "$_p" || { kill -9 "$_p" 2>/dev/null; wait_until 10 gone "$_p"; }
}

# cgroup v2 as the kubelet wants it (no systemd here): controllers enabled
# at the root, every process moved out of it first.
node_cgroups() {
    mount -t cgroup2 cgroup2 /sys/fs/cgroup || return 1
    mkdir -p /sys/fs/cgroup/init
    for _p in $(cat /sys/fs/cgroup/cgroup.procs); do
        echo "$_p" >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null
    done
    for _c in cpuset cpu io memory hugetlb pids; do
        echo "+$_c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    done
    grep -q memory /sys/fs/cgroup/cgroup.subtree_control
}

# The node's address on a dummy interface, the default route through it
# (nothing leaves the guest: it has no network device), the modules
# containerd's overlayfs, the CNI bridge and kube-proxy need; bridged
# packets through netfilter (a pod reaching a Service whose endpoint is on
# the same bridge) and forwarding, as kubeadm's preflight wants them.
node_net() {
    for _m in overlay bridge br_netfilter veth dummy crc32c_generic nf_tables nft_ct nft_nat nft_chain_nat \
        nft_masq nft_numgen nft_limit nft_fib_inet nft_reject_inet; do
        modprobe "$_m" || return 1
    done
    echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables &&
        echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables &&
        echo 1 >/proc/sys/net/ipv4/ip_forward || return 1
    # Every IPv4/IPv6 netfilter hook in use before any packet flows (an
    # empty accepting chain on each, for the node's life). The first hook
    # registered on one flips a static key, which patches kernel text (the
    # branch in ip_rcv and the like); once, kube-proxy's first rules did
    # that while the other vCPU was receiving, and the guest died in
    # ip_rcv with RIP in the middle of an instruction (cross-modifying code
    # under QEMU's software emulation). Flipped now, kube-proxy's rules and
    # conntrack patch nothing. So do conntrack's and NAT's hash seeds: each
    # is a get_random_once(), whose static key is flipped by a work item
    # after the first use; once, that happened under kube-proxy's traffic
    # and the guest died in hash_conntrack_raw (on a patched NOP). A ct
    # rule and NAT chains here, one packet through them, and a pause while
    # nothing else runs: the keys are flipped now.
    nft -f - <<EOF || return 1
table inet mock-node-hooks {
    chain prerouting { type filter hook prerouting priority 0; }
    chain input { type filter hook input priority 0; }
    chain forward { type filter hook forward priority 0; }
    chain output { type filter hook output priority 0; ct state new,established,related accept; }
    chain postrouting { type filter hook postrouting priority 0; }
    chain nat-output { type nat hook output priority 0; }
    chain nat-postrouting { type nat hook postrouting priority 100; }
}
EOF
    guest-tool http GET http://127.0.0.1:1/ >/dev/null 2>&1
    sleep 2
    # (loading dummy makes dummy0 already)
    { ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy; } &&
        ip addr add "$NODE_IP/24" dev dummy0 &&
        ip link set dummy0 up &&
        ip route add default dev dummy0 || return 1
    # The network device on QEMU's user network, which reaches only what
    # the rig forwards: the host's kubectl relay at 10.0.2.100, and the
    # host's kubectl reaching the API server here (tests/src/relay.rs).
    modprobe virtio_pci 2>/dev/null
    modprobe virtio_net &&
        ip addr add 10.0.2.15/24 dev eth0 &&
        ip link set eth0 up
}

node_ready() {
    [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# listening PORT: something listens on that TCP port (IPv4 or IPv6)
listening() {
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v p="$(printf ':%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }'
}
port_free() { ! listening "$1"; }

# (bounded per call: a server still starting may accept and not answer)
api_ready() { kubectl --request-timeout=10s get --raw /readyz >/dev/null 2>&1; }

# api_down_why: what the host sees when the API server did not become
# ready: running or not, what /readyz says, its log's last lines, memory
# and the OOM killer (all as "# " lines: they reach the test's message).
api_down_why() {
    _p=$(cat "$LOGS/kube-apiserver.pid")
    if gone "$_p"; then echo "# kube-apiserver (pid $_p) has exited"; else echo "# kube-apiserver (pid $_p) runs"; fi
    kubectl --request-timeout=10s get --raw '/readyz?verbose' 2>&1 | grep -v '\] ok$' | tail -n 12 | sed 's/^/# readyz: /'
    tail -n 15 "$LOGS/kube-apiserver.log" | cut -c1-300 | sed 's/^/# kube-apiserver.log: /'
    free -m | sed 's/^/# free: /'
    dmesg | grep -iE 'out of memory|oom-kill|killed process' | tail -n 5 | sed 's/^/# dmesg: /'
}

node_up() {
    [ -e $LOGS/node-saved ] && { node_resumed; return; }
    [ -e $LOGS/node-up ] && { echo "# node_up: the node is up already"; return 0; }
    _t0=$(uptime_s)
    mkdir -p $LOGS /var/lib
    guest-tool node-secrets || { not_ok "the node's certificates and kubeconfigs (guest-tool node-secrets)"; return 1; }
    mount -t tmpfs -o size=2g,mode=755 tmpfs /var/lib
    mount --make-rshared /
    node_cgroups || { not_ok "cgroup v2 with its controllers"; return 1; }
    node_net || { not_ok "the node's network (kernel modules, netfilter sysctls)"; return 1; }

    start etcd etcd $ETCD_ARGS
    start kube-apiserver kube-apiserver $APISERVER_ARGS
    start containerd containerd --config /etc/containerd/config.toml
    WAIT_INTERVAL=1 wait_until 600 api_ready || { not_ok "kube-apiserver ready"; node_logs; api_down_why; return 1; }
    echo "# kube-apiserver ready after $(since "$_t0") s"
    # The API server builds its OpenAPI v2 document at the first request
    # for it: kubectl apply's validation, which gives up after 32 s (seen
    # on a slow emulated run). Asked for now, in the background, while the
    # rest of the node starts.
    kubectl --request-timeout=600s get --raw /openapi/v2 >/dev/null 2>&1 &
    start kube-controller-manager kube-controller-manager $CONTROLLER_MANAGER_ARGS
    start kube-scheduler kube-scheduler $SCHEDULER_ARGS
    start kube-proxy kube-proxy $KUBE_PROXY_ARGS

    WAIT_INTERVAL=0.5 wait_until 120 ctr version >/dev/null 2>&1 || { not_ok "containerd up"; node_logs; return 1; }
    for _i in /guest/images/*.tar; do
        ctr -n k8s.io images import "$_i" >/dev/null || { not_ok "ctr images import $_i"; return 1; }
    done
    echo "# containerd up, images imported after $(since "$_t0") s"

    start kubelet kubelet $KUBELET_ARGS
    WAIT_INTERVAL=1 wait_until 600 node_ready || { not_ok "node $NODE_NAME Ready"; node_logs; return 1; }
    echo "# node $NODE_NAME Ready after $(since "$_t0") s (from the first component's start)"
    # kube-proxy has programmed the API server's Service (pods reach the
    # API through it: in-cluster configuration).
    WAIT_INTERVAL=1 wait_until 120 service_rules || { not_ok "kube-proxy: the kubernetes Service in nftables"; node_logs; return 1; }
    touch $LOGS/node-up
}

# node_saved: the last step of the saved node's setup (tests/src/node.rs,
# SETUP): the first node_up of each resumed copy finds this mark
node_saved() { touch $LOGS/node-saved; }

# node_resumed: in a copy of the saved node, just resumed (its wall clock
# set to the host's by the guest's init, its monotonic clock going on as
# saved; tests/scenarios/resume.sh shows what that means for the
# components): every component runs, the API answers, the Node is Ready
node_resumed() {
    rm -f $LOGS/node-saved
    _t0=$(uptime_s)
    for _c in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy containerd kubelet; do
        gone "$(cat $LOGS/$_c.pid)" && { not_ok "resumed node: $_c runs"; node_logs; return 1; }
    done
    WAIT_INTERVAL=0.5 wait_until 60 api_ready || { not_ok "resumed node: kube-apiserver ready"; api_down_why; return 1; }
    WAIT_INTERVAL=0.5 wait_until 60 node_ready || { not_ok "resumed node: node $NODE_NAME Ready"; node_logs; return 1; }
    echo "# node resumed from its saved state: Ready after $(since "$_t0") s (wall clock $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uptime_s) s since the node's boot)"
    touch $LOGS/node-up
}

# kube-proxy's nftables table sends the kubernetes Service's address to the
# API server's endpoint.
service_rules() {
    _ip=$(kubectl get service kubernetes -n default -o jsonpath='{.spec.clusterIP}' 2>/dev/null) &&
        [ -n "$_ip" ] && nft list table ip kube-proxy 2>/dev/null | grep -q "$_ip"
}

node_logs() {
    for _f in $LOGS/*.log; do
        echo "--- $_f: errors"
        grep -E '^[EF][0-9]{4}|level=error|"level":"error"' "$_f" | tail -n 15
        echo "--- $_f: last lines"
        tail -n 8 "$_f"
    done
}

# The seed README's "Testing Device Allocation", shared by the node's
# scenarios (v1 form, `exactly:`; the image is the node's own busybox: no
# registry here).
# --- The scenarios' helpers.
drv=mock-accel.example.com
# jp KIND NAME NS JSONPATH: one field of one object
# has TEXT PATTERN: TEXT has a line matching PATTERN (grep's basic regex)
has() { printf '%s\n' "$1" | grep -q -- "$2"; }
jp() { kubectl get "$1" "$2" ${3:+-n "$3"} -o jsonpath="$4" 2>/dev/null; }
# devices: the driver's published devices, sorted, on one line
devices() { kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[*].name}' 2>/dev/null | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//'; }
has_devices() { [ "$(devices)" = "$1" ]; }
phase() { jp pod "$1" "${2:-default}" '{.status.phase}'; }
running() { [ "$(phase "$1" "${2:-}")" = Running ]; }
gone_pod() { ! kubectl get pod "$1" -n "${2:-default}" >/dev/null 2>&1; }

# wait_running SECONDS POD [NAMESPACE], wait_gone_pod SECONDS POD
# [NAMESPACE]: the pod Running, or deleted, within SECONDS, seen by one
# watch (kubectl wait) rather than by polling with a kubectl process per
# look. Measured on the emulated node, a plain pod, same boot: Running in
# 21 and 14 s, gone in 15 and 10 s watched; 25-27 s and 20-23 s polled
# (every 0.05 or 3 s alike): each kubectl start costs the guest about
# 1.7 s of CPU, taken from the kubelet and containerd being waited for.
# A pod that does not exist yet (a controller's) is waited for first.
wait_running() {
    _wp_end=$(($(date +%s) + $1))
    WAIT_INTERVAL=1 wait_until "$1" _pod_exists "$2" "${3:-default}" || return 1
    kubectl wait --for=jsonpath='{.status.phase}'=Running pod/"$2" -n "${3:-default}" \
        --timeout="$(_wp_left)s" >/dev/null 2>&1
}
wait_gone_pod() {
    _wp_end=$(($(date +%s) + $1))
    kubectl wait --for=delete pod/"$2" -n "${3:-default}" --timeout="$(_wp_left)s" >/dev/null 2>&1 ||
        gone_pod "$2" "${3:-}"
}
_pod_exists() { kubectl get pod "$1" -n "$2" >/dev/null 2>&1; }
_wp_left() { _l=$((_wp_end - $(date +%s))); [ "$_l" -gt 1 ] && echo "$_l" || echo 1; }
# The agent as a node process (its admin port on 127.0.0.1:8080).
start_agent() {
    NODE_NAME=$NODE_NAME POD_NAMESPACE=kube-system start agent \
        mock-accel-agent --admin-address=127.0.0.1:8080 --v=2 "$@"
}
# metric NAME: the sum of its series on the agent's /metrics
metric() {
    guest-tool http GET http://127.0.0.1:8080/metrics 2>/dev/null |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2; n++ } END { if (n) print s }'
}
registered() { [ "$(metric mock_accel_plugin_registered)" = 1 ]; }

# claim NAME CLASS [CEL [CLASS2 CEL2]]: a claim of one device per request,
# of that class, chosen by the CEL selector if any; with TOLERATE=EFFECT
# set, its requests tolerate the driver's health taints of that effect; in
# namespace $NS if set
claim() {
    _request() { # _request NAME CLASS CEL
        printf '    - name: %s\n      exactly:\n        deviceClassName: %s\n' "$1" "$2"
        [ -z "$3" ] || printf '        selectors: [{cel: {expression: %s}}]\n' "'$3'"
        [ -z "${TOLERATE:-}" ] ||
            printf '        tolerations: [{key: %s/health, operator: Exists, effect: %s}]\n' "$drv" "$TOLERATE"
    }
    {
        printf 'apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\nmetadata: {name: %s, namespace: %s}\n' "$1" "${NS:-default}"
        printf 'spec:\n  devices:\n    requests:\n'
        _request a "$2" "$3"
        [ -z "$4" ] || _request b "$4" "$5"
    } | kubectl apply -f - >/dev/null
}
# claim_pod NAME CLAIM: a pod using the claim's every request
claim_pod() {
    seed_pod "$1" "  - name: c
    resourceClaimName: $2" "      - name: c" >/dev/null
}
# seed_claim NAME: the seed's ResourceClaim for one PF (seed_claim_yaml:
# its manifest, printed)
seed_claim() { seed_claim_yaml "$1" | kubectl apply -f -; }
seed_claim_yaml() {
    cat <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata:
  name: $1
  namespace: default
spec:
  devices:
    requests:
    - name: accel
      exactly:
        deviceClassName: mock-accel-pf
        count: 1
EOF
}

# seed_pod NAME CLAIMS-YAML REFS-YAML [LIMITS]: the seed's test pod, with
# these spec.resourceClaims entries and container claim references (none
# if empty), and these resource limits (`name: n, ...`), in $NS if set
# (seed_pod_yaml: its manifest, printed)
seed_pod() { seed_pod_yaml "$@" | kubectl apply -f -; }
seed_pod_yaml() {
    {
        cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: ${NS:-default}
spec:
  terminationGracePeriodSeconds: 1
EOF
        [ -z "$2" ] || printf '  resourceClaims:\n%s\n' "$2"
        cat <<EOF
  containers:
  - name: test
    image: $BUSYBOX_IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "env | grep MOCK_ACCEL && sleep 3600"]
    resources:
EOF
        [ -z "$3" ] || printf '      claims:\n%s\n' "$3"
        [ -z "${4:-}" ] || printf '      limits: {%s}\n' "$4"
    }
}

# The chart as Helm packaged it, and its version (tests/src/node.rs).
CHART=$(ls /guest/mock-device-*.tgz 2>/dev/null)
VERSION=${CHART##*/mock-device-}
VERSION=${VERSION%.tgz}

# registry_up: the OCI registry (distribution's, TLS with the run's CA,
# which the guest trusts) at $REGISTRY; the chart pushed by Helm as an OCI
# artifact (oci://$REGISTRY/charts/mock-device), the driver's image by ctr
# from a containerd namespace of its own, then deleted there: the node has
# to pull it from the registry.
registry_up() {
    if [ -e $LOGS/registry-pushed ]; then
        echo "# registry_up: $REGISTRY serves the chart and the driver's image since the node's setup"
        return 0
    fi
    mkdir -p /var/lib/registry
    # (running already when an earlier scenario of this boot started it)
    [ -e $LOGS/registry.pid ] && ! gone "$(cat $LOGS/registry.pid)" ||
        start registry registry serve /etc/registry/config.yml
    _pushed_chart() { helm push "$CHART" oci://$REGISTRY/charts >/tmp/push.log 2>&1; }
    WAIT_INTERVAL=0.5 wait_until 60 _pushed_chart ||
        { not_ok "helm push to the registry: $(cat /tmp/push.log)"; tail -n 20 $LOGS/registry.log; return 1; }
    ok "helm push $(basename $CHART) oci://$REGISTRY/charts ($(grep -o 'Pushed: .*' /tmp/push.log))"
    for _t in /guest/driver-images/*.tar; do ctr -n push images import "$_t" >/dev/null || return 1; done
    _img=$(ctr -n push images ls -q | grep mock-accel-dra-driver)
    ctr -n push images tag "$_img" "$REGISTRY/mock-accel-dra-driver:$VERSION" >/dev/null
    if ctr -n push images push "$REGISTRY/mock-accel-dra-driver:$VERSION" >/tmp/ctr-push.log 2>&1; then
        ok "ctr push $REGISTRY/mock-accel-dra-driver:$VERSION"
    else
        not_ok "ctr push $REGISTRY/mock-accel-dra-driver:$VERSION: $(tail -n 5 /tmp/ctr-push.log)"
        return 1
    fi
    # The module images (KMM's per kernel, the loader's with every build).
    for _img in $(ctr -n push images ls -q | grep mock-accel-module); do
        # (a tag takes no "+": Debian's 6.12.107+deb12-amd64 is pushed as _deb12)
        _to=$REGISTRY/mock-accel-module:$(echo "${_img##*:}" | tr + _)
        ctr -n push images tag "$_img" "$_to" >/dev/null
        ctr -n push images push "$_to" >/tmp/ctr-push.log 2>&1 ||
            { not_ok "ctr push $_to: $(tail -n 5 /tmp/ctr-push.log)"; return 1; }
    done
    ok "ctr push the module images: $(ctr -n push images ls -q | grep -c "^$REGISTRY/mock-accel-module")"
    ctr -n push images rm --sync $(ctr -n push images ls -q) >/dev/null
    check "containerd holds no driver image before the first install" "" "$(ctr -n k8s.io images ls -q | grep mock-accel)"
    touch $LOGS/registry-pushed
}
