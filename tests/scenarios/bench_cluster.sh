# just bench-cluster: the driver on the real node in the guest (release
# builds), every figure from one run:
#  (a) one API write as the agent's kind of client sees it (kube-rs, p50/p99):
#      a ConfigMap, and a copy of the agent's own ResourceSlice (the baseline
#      of (b): the same write the agent makes for a hot-plug)
#  (b) kernel event -> slice written in the real API server (the agent's own
#      clock: from the kernel's timestamp of the event to the API's answer),
#      and where that time goes, step by step (the agent's `steps`: the
#      uevent after the kernel's time, the trigger taken, the burst
#      coalesced, the scan, the handoff, the plan, the write)
#  (c) hot-plug -> a waiting pod scheduled and Running, split into our part
#      (the slice) and the rest (scheduler, kubelet, containerd)
#  (d) NodePrepareResources as the kubelet measures it (its own metrics)
#  (e) API requests while idle, per hour
#  (f) (b) again with the agent publishing without shared counters: one
#      slice write per hot-plug instead of two
# Lines starting with "BENCH" are the results.
. /guest/lib.sh
. /guest/node.sh
drv=mock-accel.example.com
N=${BENCH_HOTPLUG:-40}
PODS=${BENCH_PODS:-3}
IDLE=${BENCH_IDLE:-120}

node_up || exit 1
modprobe mock-accel num_pfs=1 || exit 1
kubectl apply -f /guest/deviceclasses.json >/dev/null
NODE_NAME=$NODE_NAME POD_NAMESPACE=kube-system start agent mock-accel-agent --admin-address=127.0.0.1:8080
devices() { kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[*].name}' 2>/dev/null; }
has_devices() { [ "$(devices)" = "$1" ]; }
WAIT_INTERVAL=0.5 wait_until 120 has_devices mock0 || { echo "no slice"; node_logs; exit 1; }

# pctl Q: the Q-quantile (nearest rank) of the numbers on stdin
pctl() { sort -n | awk -v q="$1" '{ a[NR] = $1 } END { i = int(NR * q); if (i < NR * q) i++; if (i < 1) i = 1; print a[i] }'; }
published() { grep -c 'ResourceSlices published latency_ms=' $LOGS/agent.log; }
more_than() { [ "$(published)" -gt "$1" ]; }
latencies() { grep -o 'latency_ms=[0-9.]*' $LOGS/agent.log | cut -d= -f2 | tail -n "$1"; }
# writes_per_publish: how many API writes the last 2N publishes took, counted
writes_per_publish() {
    grep 'ResourceSlices published' $LOGS/agent.log | tail -n $((2 * N)) | grep -o 'writes=[0-9]*' |
        sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }'
}

# (a), run before (b) and again after it: the same run's baselines, each
# side of it (the emulated node is not equally loaded from minute to minute)
named() { kubectl get resourceslices -l driver=$drv -o jsonpath="{range .items[?(@.spec.$1)]}{.metadata.name}{\"\\n\"}{end}" | head -n 1; }
# baselines WHEN: sets a50 a99 (ConfigMap), s50 s99 (one slice), w50 w99
# (the agent's two writes for a hot-plug), and prints them
baselines() {
    _when=$1
    dev_slice=$(named devices) ctr_slice=$(named sharedCounters)
    set -- $(guest-tool api-writes --count 200)
    a50=$1 a99=$2
    echo "BENCH (a, $_when) one API write (kube-rs client, ConfigMap replace, 200 writes): p50 $a50 ms  p99 $a99 ms"
    set -- $(guest-tool api-writes --count 200 --slice-like "$dev_slice")
    s50=$1 s99=$2
    echo "BENCH (a, $_when) one slice write (kube-rs client, a copy of the agent's $dev_slice replaced, a device more every other write, 200 writes): p50 $s50 ms  p99 $s99 ms"
    w50="" w99=""
    # (no counters slice: the agent publishes without them, (f))
    [ -n "$ctr_slice" ] || return 0
    set -- $(guest-tool api-writes --count 200 --slice-like $ctr_slice "$dev_slice")
    w50=$1 w99=$2
    echo "BENCH (a, $_when) the agent's writes for a hot-plug as a bare client makes them (copies of $ctr_slice then $dev_slice, a counter set and a device more every other round, 200 rounds): p50 $w50 ms  p99 $w99 ms"
}

baselines "before (b)"

# (b)
# hotplugs: N hot-plug and unplug pairs of mock7, each waited for in the slices
hotplugs() {
    for i in $(seq 1 "$N"); do
        k=$(published)
        echo 7 >$bus/new_device
        wait_until 30 more_than "$k" || echo "# add $i: no publish"
        k=$(published)
        echo 7 >$bus/del_device
        wait_until 30 more_than "$k" || echo "# del $i: no publish"
    done
}
hotplugs
clock=$(grep -o 'clock="[a-z]*"' $LOGS/agent.log | tail -n 1)
b50=$(latencies $((2 * N)) | pctl 0.50)
b99=$(latencies $((2 * N)) | pctl 0.99)
echo "BENCH (b) kernel event -> slice in the real API server ($((2 * N)) hot-plug changes, $clock): p50 $b50 ms  p99 $b99 ms"
echo "BENCH (b) API writes per publish: $(writes_per_publish)"
ratio() { [ -n "$2" ] && awk -v b="$1" -v a="$2" 'BEGIN { printf "%.2f", b / a }' || echo -; }
# ratios WHAT P50 P99: against the last baselines
ratios() {
    echo "BENCH $1/(a, $_when) ratio p50/p99: $(ratio $2 $a50)/$(ratio $3 $a99) against the ConfigMap, $(ratio $2 $s50)/$(ratio $3 $s99) against one slice write (target <= 2), $(ratio $2 $w50)/$(ratio $3 $w99) against the same writes made bare"
}
# print_steps WHAT: each step's p50/p99 over the last 2N publishes
print_steps() {
    steps=$(grep 'ResourceSlices published' $LOGS/agent.log | grep -o 'steps="[^"]*"' | tail -n $((2 * N)) | tr -d '"' | sed 's/^steps=/ /')
    for s in uevent taken coalesce scan handoff plan write; do
        v=$(echo "$steps" | grep -o " $s=[0-9.]*" | cut -d= -f2)
        [ -n "$v" ] || continue
        echo "BENCH $1 step $s: p50 $(echo "$v" | pctl 0.50) ms  p99 $(echo "$v" | pctl 0.99) ms  ($(echo "$v" | wc -l) changes)"
    done
}
ratios "(b)" $b50 $b99
print_steps "(b)"
baselines "after (b)"
ratios "(b)" $b50 $b99

# (c) a pod waits for a PF (none exists), one is hot-plugged.
put $bus/del_device 0
WAIT_INTERVAL=0.5 wait_until 60 has_devices "" || echo "# mock0 still published"
phase() { kubectl get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }
running() { [ "$(phase "$1")" = Running ]; }
unschedulable() { kubectl get events --field-selector "involvedObject.name=$1,reason=FailedScheduling" -o name 2>/dev/null | grep -q .; }
gone_pod() { ! kubectl get pod "$1" >/dev/null 2>&1; }
: >/tmp/c_slice
: >/tmp/c_run
for i in $(seq 1 "$PODS"); do
    kubectl apply -f - >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: bench-$i, namespace: default}
spec:
  devices:
    requests:
    - name: accel
      exactly: {deviceClassName: mock-accel-pf}
---
apiVersion: v1
kind: Pod
metadata: {name: bench-$i, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  resourceClaims: [{name: accel, resourceClaimName: bench-$i}]
  containers:
  - name: test
    image: $BUSYBOX_IMAGE
    command: ["sleep", "3600"]
    resources: {claims: [{name: accel}]}
EOF
    WAIT_INTERVAL=0.5 wait_until 120 unschedulable bench-$i || echo "# bench-$i never unschedulable"
    k=$(published)
    t0=$(uptime_s)
    echo $((10 + i)) >$bus/new_device
    WAIT_INTERVAL=0.1 wait_until 300 running bench-$i || echo "# bench-$i not Running"
    since "$t0" >>/tmp/c_run
    echo >>/tmp/c_run
    wait_until 10 more_than "$k"
    latencies 1 >>/tmp/c_slice
    kubectl delete pod bench-$i --wait=true >/dev/null
    kubectl delete resourceclaim bench-$i >/dev/null
    put $bus/del_device $((10 + i))
done
c_run=$(pctl 0.5 </tmp/c_run)
c_slice=$(pctl 0.5 </tmp/c_slice)
echo "BENCH (c) hot-plug -> waiting pod Running (median of $PODS): $c_run s; of which kernel event -> slice (ours): $c_slice ms; scheduler + kubelet + containerd (+ our prepare, see d): the rest"

# (d) the kubelet's own DRA metrics
kubectl get --raw "/api/v1/nodes/$NODE_NAME/proxy/metrics" >/tmp/kubelet.metrics 2>/dev/null
hist() { # hist NAME FILTER: "count mean_ms p50<=ms p99<=ms" of a Prometheus histogram
    grep "^$1" /tmp/kubelet.metrics | grep "$2" | awk -v n="$1" '
        $1 ~ n "_bucket" { match($1, /le="[^"]*"/); le = substr($1, RSTART + 4, RLENGTH - 5); b[++k] = le; c[k] = $2 }
        $1 ~ n "_sum" { s = $2 } $1 ~ n "_count" { t = $2 }
        END { if (!t) { print "none"; exit }
              for (i = 1; i <= k; i++) { if (!p50 && c[i] >= t * 0.5) p50 = b[i]; if (!p99 && c[i] >= t * 0.99) p99 = b[i] }
              printf "%d calls, mean %.1f ms, p50 <= %s s, p99 <= %s s", t, s / t * 1000, p50, p99 }'
}
echo "BENCH (d) kubelet dra_operations_duration_seconds PrepareResources: $(hist dra_operations_duration_seconds 'operation_name="PrepareResources"')"
echo "BENCH (d) kubelet dra_grpc_operations_duration_seconds NodePrepareResources: $(hist dra_grpc_operations_duration_seconds 'NodePrepareResources')"

# (e) idle
apireq() { kubectl get --raw /metrics 2>/dev/null | grep '^apiserver_request_total{' | grep "resource=\"$1\"" | grep -E "verb=\"($2)\"" | awk '{ s += $2 } END { print s + 0 }'; }
agent_writes() { guest-tool http GET http://127.0.0.1:8080/metrics 2>/dev/null | awk '$1 ~ /^mock_accel_slice_writes_total/ { s += $2 } END { print s + 0 }'; }
s0=$(apireq resourceslices 'POST|PUT|PATCH|DELETE|DELETECOLLECTION') r0=$(apireq resourceslices 'GET|LIST|WATCH') l0=$(apireq leases 'PUT|PATCH') w0=$(agent_writes)
sleep "$IDLE"
s1=$(apireq resourceslices 'POST|PUT|PATCH|DELETE|DELETECOLLECTION') r1=$(apireq resourceslices 'GET|LIST|WATCH') l1=$(apireq leases 'PUT|PATCH') w1=$(agent_writes)
per_hour() { awk -v d="$1" -v t="$IDLE" 'BEGIN { printf "%.0f", d * 3600 / t }'; }
echo "BENCH (e) idle ${IDLE} s: agent slice writes $((w1 - w0)) (per hour $(per_hour $((w1 - w0)))); API server resourceslices writes $((s1 - s0)), reads/watches $((r1 - r0)) (per hour $(per_hour $((r1 - r0)))); lease writes (kubelet node lease + agent heartbeat) $((l1 - l0)) (per hour $(per_hour $((l1 - l0))))"

# (f) as (b), the agent without shared counters (sharedCounters=false, or
# a 1.34/1.35 cluster): a hot-plug is one slice write
# (mock0 back: (c) unplugged it; the same pool as (b)'s)
stop agent
put $bus/new_device 0
NODE_NAME=$NODE_NAME POD_NAMESPACE=kube-system start agent mock-accel-agent --admin-address=127.0.0.1:8080 --shared-counters=false
WAIT_INTERVAL=0.5 wait_until 120 has_devices mock0 || echo "# no slice without counters"
no_counters() { [ -z "$(kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.sharedCounters}')" ]; }
WAIT_INTERVAL=0.5 wait_until 60 no_counters || echo "# the counter slice is still there"
hotplugs
f50=$(latencies $((2 * N)) | pctl 0.50)
f99=$(latencies $((2 * N)) | pctl 0.99)
echo "BENCH (f) as (b) without shared counters: p50 $f50 ms  p99 $f99 ms; API writes per publish: $(writes_per_publish)"
print_steps "(f)"
# (one write per publish: the one-slice baseline is the same writes made bare)
baselines "after (f)"
ratios "(f)" $f50 $f99
stop agent
