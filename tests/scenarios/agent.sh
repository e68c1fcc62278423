# The agent in the guest with the real module and the test API server:
# every change must reach the API through uevents (rescans are off). Each
# step prints "LATENCY <step> <ms>": from the sysfs write to the API
# holding the new pool, as a client watching it sees.
. /guest/lib.sh
api=http://127.0.0.1:6443
node=mock-guest

mock-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kc >/tmp/apiserver.log 2>&1 &
wait_until 60 guest-tool http GET $api/version >/dev/null 2>&1
check_true "the test API server answers" guest-tool http GET $api/version
guest-tool http POST $api/api/v1/nodes "{\"metadata\":{\"name\":\"$node\"}}" >/dev/null
check_true "modprobe mock-accel" modprobe mock-accel

KUBECONFIG=/tmp/kc NODE_NAME=$node mock-accel-agent --rescan-interval=0 --admin-address=127.0.0.1:8080 --v=2 >/tmp/agent.log 2>&1 &
agent=$!

# wait_dev DESC COUNT [FILE VALUE]
wait_dev() {
    if [ $# -gt 2 ]; then
        ms=$(guest-tool wait-devices --api $api --node $node --count "$2" --write "$3" "$4" 2>&1)
    else
        ms=$(guest-tool wait-devices --api $api --node $node --count "$2" 2>&1)
    fi
    if [ $? -eq 0 ]; then ok "$1 (${ms} ms)"; echo "LATENCY $1: $ms"; else not_ok "$1: $ms"; fi
}

wait_dev "startup publishes 4 PFs" 4
wait_dev "hot-plug PF 5" 5 $bus/new_device "5 1"
wait_dev "enable 4 VFs on mock1" 9 $cls/mock1/sriov_numvfs 4
wait_dev "disable them" 5 $cls/mock1/sriov_numvfs 0
wait_dev "hot-unplug PF 5" 4 $bus/del_device 5
modprobe -r mock-accel &
job=$!
wait_dev "modprobe -r empties the pool" 0
wait $job
modprobe mock-accel &
job=$!
wait_dev "modprobe publishes again" 4
wait $job

# What the API holds is what sysfs says.
guest-tool http GET "$api/apis/resource.k8s.io/v1/resourceslices?labelSelector=driver%3Dmock-accel.example.com" >/tmp/slices
check_true "mock2's UUID is published" grep -q "$(cat $cls/mock2/uuid)" /tmp/slices
check_true "the pcieRoot standard attribute" grep -q 'resource.kubernetes.io/pcieRoot' /tmp/slices

# A kubelet restart wipes the node's slices: the agent restores them.
guest-tool http POST "$api/_mock/kubelet-restart?node=$node" >/dev/null
wait_dev "restored after a kubelet wipe" 4

# Lost events: while the agent is frozen, hundreds of uevents overflow its
# socket buffer; on resume the kernel reports ENOBUFS and the agent rescans.
kill -STOP $agent
for round in 1 2 3 4 5 6; do
    for pf in 0 1 2 3; do echo 8 >$cls/mock$pf/sriov_numvfs; echo 0 >$cls/mock$pf/sriov_numvfs; done
done
echo 8 >$cls/mock2/sriov_numvfs
kill -CONT $agent
wait_dev "after lost events, the pool is right" 12
guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
check_true "the overflow was noticed (ENOBUFS)" grep -qE '^mock_accel_uevent_overflows_total [1-9]' /tmp/metrics
check_true "and answered with a full rescan" grep -qE '^mock_accel_rescans_total\{reason="overflow"\} [1-9]' /tmp/metrics

guest-tool http GET http://127.0.0.1:8080/readyz >/tmp/readyz
check "not ready before the kubelet registers the plugin" 503 "$(head -1 /tmp/readyz)"
check_true "the kubelet registers the plugin" guest-tool kubelet register
guest-tool http GET http://127.0.0.1:8080/readyz >/tmp/readyz
check "readyz" 200 "$(head -1 /tmp/readyz)"
guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
check_true "uevents counted" grep -q 'mock_accel_uevents_total{source="kernel",action="add"}' /tmp/metrics
grep -E '^mock_accel_(event_to_slice_seconds_(sum|count)|uevents_total|uevent_overflows_total|rescans_total|slice_writes_total)' /tmp/metrics | sed 's/^/METRIC /'

kill $agent
wait_until 30 gone $agent
check_false "SIGTERM stops the agent" kill -0 $agent
check_true "it stopped cleanly" grep -q "node agent stopped" /tmp/agent.log
grep -iE "error|panic" /tmp/agent.log | head -5
finish
