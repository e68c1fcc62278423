# Nodes that share a kernel, kind's way (issue 35), with the real
# scheduler: the node (mock-guest) and two more (mock-guest-b, -c), each
# a kubelet, containerd and kube-proxy of its own in mount, network and UTS
# namespaces of its own (its own /var/lib/kubelet, /var/lib/containerd,
# /run/containerd, CDI and CNI directories, pod logs, cgroup), bridged to
# the guest as kind's nodes are to the host, and /sys as kind gives it:
# read-only, the module's four directories mounted writable over it (the
# chart README's kind config). One kernel, the module loaded once with 12
# PFs; the chart with devices.sharedKernel (4 PFs a node): each pool only
# its node's devices, 10 claims at once placed by the real scheduler on the
# nodes that own their devices, a hot-plug with an owner and a fault on
# that node only, a node's agent killed with the others unaffected, a node
# gone and its PFs given back by the controller. What the second and third
# node cost the emulated guest is measured and printed.
. /guest/lib.sh
. /guest/node.sh
ns=mock-device
agent=mock-accel-node-agent
BRIDGE=kind0
BRIDGE_IP=10.99.1.1

node_up || { finish; exit 1; }
registry_up || { finish; exit 1; }

# busy SECONDS: how many of the guest's cores were busy (not idle, not
# waiting on I/O) over the next SECONDS, e.g. 0.42
busy() {
    _a=$(head -n 1 /proc/stat)
    sleep "$1"
    _b=$(head -n 1 /proc/stat)
    echo "$_a
$_b" | awk '{ t = 0; for (i = 2; i <= NF; i++) t += $i; idle = $5 + $6 }
        NR == 1 { t0 = t; i0 = idle } NR == 2 { printf "%.2f", ((t - t0) - (idle - i0)) / (t - t0) * 2 }'
}
# used_mib: memory in use (MemTotal - MemAvailable), MiB
used_mib() { awk '/^MemTotal/ { t = $2 } /^MemAvailable/ { a = $2 } END { printf "%d", (t - a) / 1024 }' /proc/meminfo; }
# cg_usec NODE: the CPU time a shared node's cgroup (its kubelet,
# containerd, kube-proxy and pods) has used, microseconds
cg_usec() { awk '$1 == "usage_usec" { print $2 }' /sys/fs/cgroup/$1/cpu.stat; }
# cost WHAT: the guest's busy cores over 20 s, the part each shared node
# up ($up) used itself, memory in use
up=""
cost() {
    _before=""
    for _x in $up; do _before="$_before $(cg_usec $_x)"; done
    _busy=$(busy 20)
    _per="" _k=0
    for _x in $up; do
        _k=$((_k + 1))
        _per="$_per, $_x $(awk -v a="$(echo $_before | cut -d' ' -f$_k)" -v b="$(cg_usec $_x)" 'BEGIN { printf "%.2f", (b - a) / 20e6 }')"
    done
    echo "# cost with $1: $_busy cores busy over 20 s${_per:+ (the shared nodes' own cgroups:${_per#,})}, $(used_mib) MiB in use"
}
cost "the node alone"

# --- The module, once, for every node (before the nodes mount its directories).
check_true "modprobe mock-accel num_pfs=12" modprobe mock-accel num_pfs=12

# --- The shared nodes.
ip link add $BRIDGE type bridge && ip addr add $BRIDGE_IP/24 dev $BRIDGE && ip link set $BRIDGE up ||
    not_ok "the nodes' bridge $BRIDGE"

# in_node NAME COMMAND...: COMMAND in NAME's namespaces and cgroup
in_node() {
    _in=$1
    shift
    nsenter -t "$(cat $LOGS/$_in-ns.pid)" -m -n -u sh -c 'echo $$ >/sys/fs/cgroup/'"$_in"'/system/cgroup.procs && exec "$@"' sh "$@"
}

# shared_logs NAME: the node's components' errors and last lines (for failures)
shared_logs() {
    for _f in $LOGS/$1-*.log; do
        echo "--- $_f"
        grep -E '^[EF][0-9]{4}|level=error' "$_f" | tail -n 10
        tail -n 5 "$_f"
    done
}
# shared_node_up NAME IP INDEX: the node's files, cgroup, namespaces,
# network and /sys, then its containerd (the test images imported),
# kube-proxy and kubelet started (not waited for)
shared_node_up() {
    _sn=$1 _ip=$2 _i=$3
    _d=/var/lib/nodes/$_sn _r=/run/nodes/$_sn _e=/etc/kubernetes/nodes/$_sn
    _subnet=10.$((88 + _i)).0.0/16
    mkdir -p $_d/kubelet $_d/containerd $_d/cni $_d/pods $_d/containers $_r/containerd $_r/cdi $_e/cni \
        /var/log/pods /var/log/containers /run/cdi /var/lib/cni /var/lib/kubelet
    # Its configuration: the node's, with its own names, addresses, pod
    # subnet and cgroup (kubelet.conf, kubelet.crt and kube-proxy.conf came
    # from guest-tool node-secrets).
    sed -e "s|^tlsCertFile: .*|tlsCertFile: $_e/kubelet.crt|" -e "s|^tlsPrivateKeyFile: .*|tlsPrivateKeyFile: $_e/kubelet.key|" \
        /etc/kubernetes/kubelet.yaml >$_e/kubelet.yaml
    echo "cgroupRoot: /$_sn" >>$_e/kubelet.yaml
    sed "s|10.88.0.0/16|$_subnet|" /etc/cni/net.d/10-mock.conflist >$_e/cni/10-mock.conflist
    sed -e "s|^  kubeconfig: .*|  kubeconfig: $_e/kube-proxy.conf|" -e "s|^hostnameOverride: .*|hostnameOverride: $_sn|" \
        -e "s|^clusterCIDR: .*|clusterCIDR: $_subnet|" /etc/kubernetes/kube-proxy.yaml >$_e/kube-proxy.yaml
    # Its cgroup, as a kind node's container has one: its processes in
    # system/, its pods under it (the kubelet's cgroupRoot).
    mkdir -p /sys/fs/cgroup/$_sn/system || return 1
    for _c in cpuset cpu io memory hugetlb pids; do echo "+$_c" >/sys/fs/cgroup/$_sn/cgroup.subtree_control; done
    # Its namespaces, held by a process of its own (start's variables are
    # global: this function's are its own names).
    sh -c "echo \$\$ >/sys/fs/cgroup/$_sn/system/cgroup.procs && exec unshare -m -n -u --propagation private sleep 2000000000" &
    echo $! >$LOGS/$_sn-ns.pid
    _p=$!
    WAIT_INTERVAL=0.1 wait_until 10 sh -c "[ \"\$(readlink /proc/$_p/ns/net)\" != \"\$(readlink /proc/self/ns/net)\" ]" ||
        { not_ok "$_sn: its namespaces"; return 1; }
    # Its network: a veth on the bridge, its address, the bridge its
    # default route; forwarding and bridged netfilter for its pods, whose
    # traffic leaving the node is masqueraded (kind's ip-masq-agent).
    ip link add kv$_i type veth && ip link set veth0 netns "$_p" && ip link set kv$_i master $BRIDGE &&
        ip link set kv$_i up || { not_ok "$_sn: its veth"; return 1; }
    nsenter -t "$_p" -n sh -c "ip link set veth0 name eth0 && ip addr add $_ip/24 dev eth0 && ip link set eth0 up &&
        ip link set lo up && ip route add default via $BRIDGE_IP &&
        echo 1 >/proc/sys/net/ipv4/ip_forward && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables &&
        nft add table ip mock-node-nat &&
        nft add chain ip mock-node-nat postrouting '{ type nat hook postrouting priority 100; }' &&
        nft add rule ip mock-node-nat postrouting ip saddr $_subnet oifname eth0 masquerade" ||
        { not_ok "$_sn: its network"; return 1; }
    # Its directories over the node's, and /sys as kind gives it: a sysfs
    # of its network namespace, read-only, the cgroup hierarchy, and the
    # module's directories of the host's /sys mounted writable over it.
    nsenter -t "$_p" -m -n -u sh -c "hostname $_sn &&
        mount --bind $_d/kubelet /var/lib/kubelet && mount --bind $_d/containerd /var/lib/containerd &&
        mount --bind $_d/cni /var/lib/cni && mount --bind $_d/pods /var/log/pods &&
        mount --bind $_d/containers /var/log/containers && mount --bind $_r/containerd /run/containerd &&
        mount --bind $_r/cdi /run/cdi && mount --bind $_e/cni /etc/cni/net.d &&
        mkdir -p /tmp/host-sys-$_sn && mount --bind /sys /tmp/host-sys-$_sn &&
        mount -t sysfs -o ro sysfs /sys && mount -t cgroup2 cgroup2 /sys/fs/cgroup &&
        for _m in devices/mock-accel bus/mock-accel class/mock-accel module/mock_accel; do
            mount --bind /tmp/host-sys-$_sn/\$_m /sys/\$_m || exit 1
        done &&
        umount /tmp/host-sys-$_sn && rmdir /tmp/host-sys-$_sn && mount --make-rshared /" ||
        { not_ok "$_sn: its mounts"; return 1; }
    start $_sn-containerd in_node $_sn containerd --config /etc/containerd/config.toml
    WAIT_INTERVAL=0.5 wait_until 120 in_node $_sn ctr version >/dev/null 2>&1 || { not_ok "$_sn: containerd up"; shared_logs $_sn; return 1; }
    for _t in /guest/images/*.tar; do
        in_node $_sn ctr -n k8s.io images import "$_t" >/dev/null || { not_ok "$_sn: ctr images import $_t"; return 1; }
    done
    start $_sn-kube-proxy in_node $_sn kube-proxy --config=$_e/kube-proxy.yaml --v=1
    start $_sn-kubelet in_node $_sn kubelet --config=$_e/kubelet.yaml --kubeconfig=$_e/kubelet.conf \
        --hostname-override=$_sn --node-ip=$_ip --v=1
}
ready() { [ "$(jp node "$1" '' '{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }

i=0
for _nip in $SHARED_NODES; do
    i=$((i + 1))
    n=${_nip%%=*}
    t0=$(uptime_s)
    shared_node_up "$n" "${_nip#*=}" $i || { finish; exit 1; }
    WAIT_INTERVAL=1 wait_until 300 ready "$n" || { not_ok "$n Ready"; shared_logs "$n"; finish; exit 1; }
    ok "$n Ready after $(since "$t0") s (its namespaces, containerd with the images, kube-proxy, kubelet)"
    up="$up $n"
    sleep 10
    cost "$((i + 1)) nodes, idle, 10 s after the last Ready"
done
shared=$(echo $SHARED_NODES | sed 's/=[^ ]*//g')
nodes="$NODE_NAME $shared"
echo "# nodes: $nodes"
kubectl get nodes -o wide

# What each shared node sees of the kernel: the module's directories
# writable, the rest of /sys read-only (as the chart's pods will).
for n in $shared; do
    check "$n: /sys is read-only" "Read-only file system" \
        "$(in_node $n sh -c 'echo x >/sys/kernel/uevent_helper' 2>&1 | grep -o 'Read-only file system')"
    check "$n: the module's class directory lists the same 12 PFs" "$(list $cls)" "$(in_node $n ls $cls | sort | tr '\n' ' ' | sed 's/ $//')"
    check "$n: its hostname" "$n" "$(in_node $n hostname)"
done

# --- The chart, as the README's kind section installs it (the controller
# on the first node, as kind's control-plane node: it outlives the node
# this scenario removes).
kubectl create namespace $ns >/dev/null
kubectl label namespace $ns pod-security.kubernetes.io/enforce=privileged >/dev/null
t0=$(uptime_s)
if helm install mock-device oci://$REGISTRY/charts/mock-device --version "$VERSION" --namespace $ns \
    --set draDriver.controller.image.repository=$REGISTRY/mock-accel-dra-driver \
    --set draDriver.nodeAgent.image.repository=$REGISTRY/mock-accel-dra-driver \
    --set devices.sharedKernel.enabled=true --set devices.sharedKernel.pfsPerNode=4 \
    --set draDriver.nodeAgent.heartbeatInterval=5s --set draDriver.controller.agentGracePeriod=5s \
    --set draDriver.controller.rescanInterval=5s \
    --set-string 'draDriver.controller.nodeSelector.kubernetes\.io/hostname'=$NODE_NAME >/tmp/helm.log 2>&1; then
    ok "helm install --set devices.sharedKernel.enabled=true --set devices.sharedKernel.pfsPerNode=4"
else
    not_ok "helm install: $(tail -n 5 /tmp/helm.log)"
    finish
    exit 1
fi
# pool NODE: the devices of NODE's pool, sorted, on one line
pool() {
    kubectl get resourceslices -l driver=$drv --field-selector spec.nodeName="$1" \
        -o jsonpath='{.items[*].spec.devices[*].name}' 2>/dev/null | tr ' ' '\n' | sort -V | tr '\n' ' ' | sed 's/ $//'
}
# pool_pfs NODE: the PFs of NODE's pool
pool_pfs() { pool "$1" | tr ' ' '\n' | grep -v -- -vf | tr '\n' ' ' | sed 's/ $//'; }
pool_size() { [ "$(pool "$1" | wc -w)" = "$2" ]; }
# owned_by NODE: the PFs whose owner is NODE, sorted
owned_by() {
    for _f in $cls/mock*; do
        case $_f in *_vf*) continue ;; esac
        [ "$(cat $_f/owner)" = "$1" ] && basename $_f
    done | sort -V | tr '\n' ' ' | sed 's/ $//'
}
for n in $nodes; do
    WAIT_INTERVAL=1 wait_until 400 pool_size "$n" 4 || not_ok "$n: 4 PFs in its pool (got '$(pool "$n")')"
done
echo "# the chart on three nodes, install to 12 published PFs: $(since "$t0") s"
kubectl get pods -n $ns -o wide
rs=$(kubectl get resourceslices -l driver=$drv)
echo "$rs"
all=""
for n in $nodes; do
    check "$n: its pool holds the 4 PFs the kernel says it owns" "$(owned_by "$n")" "$(pool "$n")"
    check_true "kubectl get resourceslices: $n's slice" has "$rs" " $n  *$drv "
    all="$all $(pool "$n")"
done
check "12 distinct devices across the pools" 12 "$(echo $all | tr ' ' '\n' | sort -u | wc -l)"
uuids=$(kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[*].attributes.uuid.string}')
check "12 distinct UUIDs across the pools" "12 12" "$(echo $uuids | wc -w) $(echo $uuids | tr ' ' '\n' | sort -u | wc -l)"
pci=$(kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[*].attributes.pciAddress.string}')
check "12 distinct PCI addresses" 12 "$(echo $pci | tr ' ' '\n' | sort -u | wc -l)"
check "no PF unowned" "" "$(owned_by '')"

# --- 10 claims at once (one apply), one PF each, a pod each, the pods
# placed by the scheduler where their claims' devices can be allocated.
t0=$(uptime_s)
for c in 0 1 2 3 4 5 6 7 8 9; do
    seed_claim_yaml pf-$c
    echo ---
    seed_pod_yaml pod-$c "  - name: accel
    resourceClaimName: pf-$c" "      - name: accel"
    echo ---
done >/tmp/claims.yaml
check_true "10 claims and their pods created by one kubectl apply" sh -c "kubectl apply -f /tmp/claims.yaml >/dev/null"
for c in 0 1 2 3 4 5 6 7 8 9; do
    wait_running 600 pod-$c || not_ok "pod-$c Running (phase '$(phase pod-$c)')"
done
echo "# 10 claims and pods on three nodes: all Running after $(since "$t0") s"
kubectl get pods -o wide
placed=""
wrong=""
for c in 0 1 2 3 4 5 6 7 8 9; do
    node=$(jp pod pod-$c default '{.spec.nodeName}')
    dev=$(jp resourceclaim pf-$c default '{.status.allocation.devices.results[0].device}')
    pool_of=$(jp resourceclaim pf-$c default '{.status.allocation.devices.results[0].pool}')
    placed="$placed $dev"
    [ "$(cat $cls/$dev/owner 2>/dev/null)" = "$node" ] && [ "$pool_of" = "$node" ] ||
        wrong="$wrong pod-$c:$node:$dev:$pool_of:$(cat $cls/$dev/owner 2>/dev/null)"
    # (kubectl logs: the API server reaching the pod's kubelet on its node's address)
    env=$(kubectl logs pod-$c 2>&1 | grep '^MOCK_ACCEL_DEVICE=\|rror')
    [ "$env" = "MOCK_ACCEL_DEVICE=$dev" ] || wrong="$wrong pod-$c:env=$env"
done
check "every pod on the node that owns its device, from that node's pool, its CDI env naming it" "" "$wrong"
placed=$(echo $placed | tr ' ' '\n' | sort -V | tr '\n' ' ' | sed 's/ $//')
check "10 distinct devices allocated" 10 "$(echo $placed | tr ' ' '\n' | sort -u | wc -l)"
check "status 1 on exactly the 10 allocated functions" "$placed" "$(allocated | tr ' ' '\n' | sort -V | tr '\n' ' ' | sed 's/ $//')"
spread=""
for n in $nodes; do spread="$spread $(kubectl get pods --field-selector spec.nodeName=$n -o name | grep -c pod/pod-)"; done
echo "# pods per node ($nodes):$spread"
cost "the chart and 10 pods on three nodes"
# The CDI specs on each node's own directory.
for n in $shared; do
    check "$n: one CDI spec per pod it runs, in its own /var/run/cdi" \
        "$(kubectl get pods --field-selector spec.nodeName=$n -o name | grep -c pod/pod-)" \
        "$(in_node $n ls /var/run/cdi | grep -c '\.json$')"
done

# --- A hot-plug with an owner: that node's pool only.
b=$(echo $shared | cut -d' ' -f1)
c=$(echo $shared | cut -d' ' -f2)
before_a=$(pool $NODE_NAME) before_c=$(pool $c)
t0=$(uptime_s)
put $bus/new_device "12 0 $b"
WAIT_INTERVAL=0.2 wait_until 60 pool_size "$b" 5 && ok "a PF hot-plugged with owner $b: in $b's pool after $(since "$t0") s" ||
    not_ok "mock12 in $b's pool (got '$(pool "$b")')"
check "... and in no other pool" "$before_a | $before_c" "$(pool $NODE_NAME) | $(pool $c)"

# --- A fault on one of c's PFs: the taint in c's pool only.
c0=$(owned_by "$c" | cut -d' ' -f1)
taints() { kubectl get resourceslices -l driver=$drv -o jsonpath='{range .items[*]}{.spec.nodeName}{range .spec.devices[*]}{" "}{.name}{"="}{.taints[*].effect}{end}{"\n"}{end}' 2>/dev/null | grep '=[A-Z]'; }
put $cls/$c0/health failed
tainted() { taints | grep "^$c " | tr ' ' '\n' | grep -qx "$c0=NoSchedule"; }
WAIT_INTERVAL=0.5 wait_until 60 tainted && ok "$c0 failed: tainted in $c's pool" || not_ok "$c0 tainted (taints: $(taints))"
check "no other device tainted" "1" "$(taints | tr ' ' '\n' | grep -c '=[A-Z]')"
put $cls/$c0/health ok
WAIT_INTERVAL=0.5 wait_until 60 sh -c "[ -z \"\$(kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[*].taints}')\" ]" &&
    ok "$c0 recovered: untainted" || not_ok "$c0 untainted (taints: $(taints))"

# --- A DeviceScenario for b (the declared-devices API): its PFs and one
# more, hot-plugged by b's agent with b as the owner.
b_pfs=$(pool_pfs "$b")
ids=$(for f in $b_pfs mock14; do printf '{id: %s}, ' "${f#mock}"; done | sed 's/, $//')
before_a=$(pool $NODE_NAME) before_c=$(pool $c)
t0=$(uptime_s)
kubectl apply -f - >/dev/null <<EOF
apiVersion: $drv/v1alpha1
kind: DeviceScenario
metadata: {name: on-b}
spec:
  nodeName: $b
  pfs: [$ids]
EOF
has_pf() { pool "$1" | tr ' ' '\n' | grep -qx "$2"; }
WAIT_INTERVAL=0.5 wait_until 120 has_pf "$b" mock14 &&
    ok "DeviceScenario on-b (pfs: [$ids]): mock14 in $b's pool after $(since "$t0") s" ||
    not_ok "DeviceScenario on-b: mock14 in $b's pool (got '$(pool "$b")'; status: $(jp devicescenario on-b '' '{.status}'))"
check "... owned by $b in the kernel, no other pool changed" "$b | $before_a | $before_c" \
    "$(cat $cls/mock14/owner 2>/dev/null) | $(pool $NODE_NAME) | $(pool $c)"
applied() { [ "$(jp devicescenario on-b '' "{.status.nodes[?(@.node==\"$b\")].conditions[?(@.type==\"Applied\")].status}")" = True ]; }
WAIT_INTERVAL=1 wait_until 60 applied && ok "DeviceScenario on-b: Applied on $b" ||
    not_ok "DeviceScenario on-b Applied (status: $(jp devicescenario on-b '' '{.status}'))"

# --- c's agent killed: the others unaffected (their slices not rewritten).
# rvs NODE: the resourceVersions of NODE's slices
rvs() { kubectl get resourceslices -l driver=$drv --field-selector spec.nodeName="$1" -o jsonpath='{.items[*].metadata.resourceVersion}'; }
# agent_pid NODE: the node agent's process on NODE (by its cgroup)
agent_pid() {
    for _p in $(pidof mock-accel-agent); do
        grep -q "/$1/kubepods" /proc/$_p/cgroup 2>/dev/null && { echo $_p; return; }
    done
}
rv_a=$(rvs $NODE_NAME) rv_b=$(rvs $b)
pid=$(agent_pid $c)
check_true "$c's agent found by its cgroup" [ -n "$pid" ]
kill -9 $pid
t0=$(uptime_s)
nb=$(pool "$b" | wc -w)
put $bus/new_device "13 0 $b"
WAIT_INTERVAL=0.2 wait_until 180 pool_size "$b" $((nb + 1)) && ok "$c's agent killed: a hot-plug for $b in its pool after $(since "$t0") s" ||
    not_ok "mock13 in $b's pool with $c's agent down (got '$(pool "$b")')"
check "$NODE_NAME's slices not rewritten" "$rv_a" "$(rvs $NODE_NAME)"
restarted() { [ -n "$(agent_pid $c)" ] && [ "$(agent_pid $c)" != "$pid" ]; }
WAIT_INTERVAL=1 wait_until 300 restarted && ok "$c's agent restarted by its kubelet" || not_ok "$c's agent restarted"
same_pool() { [ "$(pool "$c")" = "$(owned_by "$c")" ]; }
WAIT_INTERVAL=1 wait_until 120 same_pool
check "$c's pool the same after its agent's restart (it takes nothing again)" "$(owned_by "$c")" "$(pool "$c")"
check "nobody took more: 4 PFs each but $b's three hot-plugged" "4 7 4" \
    "$(owned_by $NODE_NAME | wc -w) $(owned_by $b | wc -w) $(owned_by $c | wc -w)"
for x in 0 1 2 3 4 5 6 7 8 9; do running pod-$x || not_ok "pod-$x still Running (phase '$(phase pod-$x)')"; done

# --- c gone from the cluster: everything of it killed (kind's `docker rm
# -f`), its Node deleted. The controller gives its PFs back (functions
# freed first: its kubelet will never unprepare) once its heartbeat is
# past the grace; the other nodes' untouched.
c_pfs=$(owned_by "$c")
rv_a=$(rvs $NODE_NAME) rv_b=$(rvs $b)
echo 1 >/sys/fs/cgroup/$c/cgroup.kill
t0=$(uptime_s)
kubectl delete node "$c" >/dev/null
released() { [ -z "$(owned_by "$c")" ]; }
WAIT_INTERVAL=1 wait_until 300 released && ok "$c gone: its PFs ($c_pfs) given back after $(since "$t0") s" ||
    not_ok "$c's PFs given back (owners: $(for f in $c_pfs; do cat $cls/$f/owner; done | tr '\n' ' '))"
freed=""
for f in $c_pfs; do [ "$(cat $cls/$f/status)" = 0 ] || freed="$freed $f"; done
check "... every function of them freed (status 0)" "" "$freed"
WAIT_INTERVAL=1 wait_until 120 sh -c "[ -z \"\$(kubectl get resourceslices -l driver=$drv --field-selector spec.nodeName=$c -o name)\" ]" &&
    ok "$c's slices deleted" || not_ok "$c's slices deleted"
check "$NODE_NAME's and $b's slices not rewritten, their PFs theirs" "$rv_a $rv_b 4 7" \
    "$(rvs $NODE_NAME) $(rvs $b) $(owned_by $NODE_NAME | wc -w) $(owned_by $b | wc -w)"
kubectl logs -n $ns -l app=mock-accel-controller --tail=200 2>/dev/null | grep -i "gave back\|release" | tail -n 3 | sed 's/^/# controller: /'

finish
