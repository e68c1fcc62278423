# Benchmarks of the agent in the guest (software emulation, 1 vCPU), with
# the real module and the test API server. Prints figures; asserts nothing
# about time. BENCH_HOTPLUGS (default 100) sets the number of hot-plugs.
api=http://127.0.0.1:6443
node=mock-guest
bus=/sys/bus/mock-accel
cls=/sys/class/mock-accel
n_hotplugs=${BENCH_HOTPLUGS:-100}
# The heartbeat Lease goes to the test API server's `default` namespace.
export POD_NAMESPACE=default

mock-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kc >/tmp/apiserver.log 2>&1 &
until guest-tool http GET $api/version >/dev/null 2>&1; do sleep 0.05; done
guest-tool http POST $api/api/v1/nodes "{\"metadata\":{\"name\":\"$node\"}}" >/dev/null
modprobe mock-accel max_vfs=16
KUBECONFIG=/tmp/kc NODE_NAME=$node mock-accel-agent --admin-address=127.0.0.1:8080 --v=1 >/tmp/agent.log 2>&1 &
guest-tool wait-devices --api $api --node $node --count 4 >/dev/null || { echo "the agent never published"; exit 1; }
n=0
until guest-tool http GET http://127.0.0.1:8080/metrics | grep -q '^mock_accel_ebpf_attached 1' || [ $n -gt 100 ]; do sleep 0.1; n=$((n + 1)); done
echo "eBPF probes attached: $(guest-tool http GET http://127.0.0.1:8080/metrics | grep '^mock_accel_ebpf_attached ' | awk '{print $2}')"

# percentiles FILE: p50 p90 p99 max of one number per line
percentiles() {
    sort -n "$1" | awk '{ v[NR] = $1 } END {
        printf "n=%d p50=%.1f ms p90=%.1f ms p99=%.1f ms max=%.1f ms\n", NR, v[int(NR*0.50+0.5)], v[int(NR*0.90+0.5)], v[int(NR*0.99+0.5)], v[NR]
    }'
}

echo "== event -> slice latency: $n_hotplugs hot-plugs (PF add and remove, alternating)"
: >/tmp/lat
i=0
while [ $i -lt $n_hotplugs ]; do
    if [ $((i % 2)) -eq 0 ]; then
        guest-tool wait-devices --api $api --node $node --count 5 --write $bus/new_device "5 1" >>/tmp/lat || exit 1
    else
        guest-tool wait-devices --api $api --node $node --count 4 --write $bus/del_device 5 >>/tmp/lat || exit 1
    fi
    i=$((i + 1))
done
echo "write(2) -> API holds the new pool, seen by a watching client: $(percentiles /tmp/lat)"
grep 'ResourceSlices published' /tmp/agent.log | grep 'clock="kernel"' | sed 's/.*latency_ms=\([0-9.]*\).*/\1/' >/tmp/klat
echo "kernel timestamp (eBPF) -> slices accepted by the API server: $(percentiles /tmp/klat)"
guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
awk '/^mock_accel_event_to_slice_seconds_(sum|count)/ {
        split($1, a, "{"); name = a[1]; clock = a[2]; sub(/clock="/, "", clock); sub(/"}/, "", clock)
        v[clock, name] = $2; clocks[clock] = 1 }
    END { for (c in clocks) printf "agent histogram, clock=%s: count=%d mean=%.1f ms\n", c,
            v[c, "mock_accel_event_to_slice_seconds_count"],
            1000 * v[c, "mock_accel_event_to_slice_seconds_sum"] / v[c, "mock_accel_event_to_slice_seconds_count"] }' /tmp/metrics
grep '^mock_accel_event_to_slice_seconds_bucket' /tmp/metrics | sed 's/^/  /'

echo "== idle: API requests while nothing changes (default 30 s safety-net rescan)"
guest-tool http DELETE $api/_mock/requests >/dev/null
idle=${BENCH_IDLE_SECONDS:-65}
sleep $idle
guest-tool http GET $api/_mock/requests | tail -1 >/tmp/idle
reqs=$(guest-tool requests /tmp/idle)
writes=$(guest-tool requests /tmp/idle --verbs create,update,patch,delete)
slice_writes=$(guest-tool requests /tmp/idle --verbs create,update,patch,delete --resource resourceslices)
echo "in ${idle} s: $reqs requests, $writes writes ($slice_writes to ResourceSlices; the rest the 10 s heartbeat Lease) -> $((reqs * 3600 / idle)) requests/hour, $((writes * 3600 / idle)) writes/hour, $((slice_writes * 3600 / idle)) slice writes/hour ($(cat /tmp/idle))"

echo "== storm: all 4 PFs enable all 16 VFs at once (64 VFs, 192 uevents)"
guest-tool http DELETE $api/_mock/requests >/dev/null
writers=""
for pf in 0 1 2 3; do
    echo 16 >$cls/mock$pf/sriov_numvfs &
    writers="$writers $!"
done
ms=$(guest-tool wait-devices --api $api --node $node --count 68 --timeout 120)
wait $writers
guest-tool http GET $api/_mock/requests | tail -1 >/tmp/storm
writes=$(guest-tool requests /tmp/storm --verbs create,update,patch,delete)
slices=$(guest-tool http GET "$api/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3D$node" | grep -o '"resourceSliceCount":[0-9]*' | head -1 | cut -d: -f2)
echo "converged in $ms ms (from the first write) with $writes slice writes for $slices changed slice(s) ($(cat /tmp/storm))"
