# The fault suite's cases that need the real node (`just faults`): the real
# kubelet retrying after the agent was SIGKILLed at each step of prepare
# and of unprepare (its test-only failpoints), the kubelet itself SIGKILLed
# mid-prepare and restarted, etcd stopped for 30 s, kube-apiserver
# restarted: pods end Running or gone, nothing allocated or specified that
# no pod holds, and the agent converges without a storm of writes (counted).
# Each case prints "FAULT|case|what was done|outcome|lost".
. /guest/lib.sh
. /guest/node.sh

node_up || { finish; exit 1; }
check_true "modprobe mock-accel" modprobe mock-accel
kubectl apply -f /guest/deviceclasses.json >/dev/null
checkpoint=/var/lib/kubelet/plugins/$drv/checkpoint.json

# agent [FAILPOINTS]: (re)start the agent as a node process, registered
agent() {
    export FAILPOINTS="${1:-}"
    start_agent
    unset FAILPOINTS
    WAIT_INTERVAL=0.5 wait_until 120 registered || not_ok "the kubelet registered the plugin"
}
agent_pid() { cat $LOGS/agent.pid; }
# died_by_failpoint FP: the agent killed itself at that failpoint
died_by_failpoint() {
    WAIT_INTERVAL=0.5 wait_until 300 gone "$(agent_pid)" &&
        grep 'failpoint: SIGKILL' $LOGS/agent.log | grep -qF "$1"
}
# lost ALLOCATED SPECS: "nothing", or what differs
lost() {
    _l=""
    [ "$(allocated)" = "$1" ] || _l="$_l allocated=[$(allocated)] expected [$1];"
    [ "$(cdi_specs)" = "$2" ] || _l="$_l specs=$(cdi_specs) expected $2;"
    echo "${_l:- nothing}"
}
# pod_with_claim NAME: a claim for a PF and a pod using it
pod_with_claim() {
    claim "$1" mock-accel-pf
    claim_pod "$1" "$1"
}
delete_pod_and_claim() {
    kubectl delete pod "$1" --wait=false >/dev/null
    wait_gone_pod 300 "$1" || not_ok "$1 deleted"
    kubectl delete resourceclaim "$1" >/dev/null
}
released() { [ -z "$(allocated)" ] && [ "$(cdi_specs)" = 0 ]; }
# writes [RESULT]: the agent's slice writes (of that result: success, error)
writes() {
    guest-tool http GET http://127.0.0.1:8080/metrics 2>/dev/null |
        awk -v r="${1:-}" '/^mock_accel_slice_writes_total\{/ && index($1, "result=\"" r) { s += $2 } END { print s + 0 }'
}

agent
WAIT_INTERVAL=0.5 wait_until 120 has_devices "mock0 mock1 mock2 mock3"

# 1. The agent SIGKILLed at each step of prepare; the real kubelet
# retries once the agent is back. Whatever was half-prepared is the
# device the pod gets, and nothing else is held.
n=0
# The crash points, in order, as the agent lists them (its failpoints.rs).
failpoints=$(mock-accel-agent --print-failpoints)
for fp in $(echo "$failpoints" | sed -n 's/^prepare: //p'); do
    n=$((n + 1))
    # The spec is prepare's second atomic write (the checkpoint's record the first).
    case $fp in atomic-write/*) set_fp="$fp=1*off->return" ;; *) set_fp="$fp=return" ;; esac
    stop agent
    agent "$set_fp"
    t0=$(uptime_s)
    pod_with_claim p1-$n
    check_true "agent killed at $fp" died_by_failpoint "$fp"
    half=$(allocated)
    agent
    check_true "$fp: the kubelet's retry: p1-$n Running" wait_running 300 p1-$n
    took=$(since "$t0")
    dev=$(allocated)
    check "$fp: one device allocated" 1 "$(echo $dev | wc -w)"
    check_true "$fp: the half-prepared device, if any, is the one prepared ('$half', '$dev')" test -z "$half" -o "$half" = "$dev"
    check "$fp: one CDI spec" 1 "$(cdi_specs)"
    delete_pod_and_claim p1-$n
    check_true "$fp: p1-$n gone: released" wait_until 120 released
    echo "FAULT|agent SIGKILLed at $fp, real kubelet|a pod with a claim; the agent restarted|pod Running ${took} s after creation on ${dev} (half-prepared before the kill: ${half:-none}); released at deletion|$(lost "" 0)"
done

# 2. The agent SIGKILLed at each step of unprepare; the kubelet retries.
n=0
for fp in $(echo "$failpoints" | sed -n 's/^unprepare: //p'); do
    n=$((n + 1))
    pod_with_claim p2-$n
    check_true "$fp: p2-$n Running" wait_running 300 p2-$n
    # Restarted with the failpoint: its first atomic write is unprepare's
    # checkpoint save (prepare's were the previous agent's).
    stop agent
    agent "$fp=return"
    check_true "$fp: the agent up before the pod's deletion" kill -0 "$(agent_pid)"
    t0=$(uptime_s)
    kubectl delete pod p2-$n --wait=false >/dev/null
    check_true "agent killed at $fp" died_by_failpoint "$fp"
    agent
    check_true "$fp: the kubelet's retry: p2-$n gone" wait_gone_pod 300 p2-$n
    took=$(since "$t0")
    check_true "$fp: p2-$n's device released" wait_until 120 released
    kubectl delete resourceclaim p2-$n >/dev/null
    check_false "$fp: nothing left in the checkpoint" grep -q '"namespace": "default"' $checkpoint
    echo "FAULT|agent SIGKILLed at $fp, real kubelet|pod deleted; the agent restarted|the kubelet's retried unprepare completed, pod gone ${took} s after its deletion|$(lost "" 0)"
done

# 3. The kubelet SIGKILLed mid-prepare (the agent held in prepare for 10 s
# by a failpoint) and restarted.
stop agent
agent "$(echo "$failpoints" | sed -n 's/^prepare: \([^ ]*\).*/\1/p')=1*sleep(10000)"
pod_with_claim p3
check_true "prepare under way (recorded in the checkpoint)" wait_until 300 grep -q '"name": "p3"' $checkpoint
kill -9 "$(cat $LOGS/kubelet.pid)"
sleep 2
start kubelet kubelet $KUBELET_ARGS
t0=$(uptime_s)
check_true "kubelet back, node Ready" wait_until 300 node_ready
check_true "p3 Running after the kubelet's restart" wait_running 300 p3
took=$(since "$t0")
check "one device allocated" 1 "$(allocated | wc -w)"
check "one CDI spec" 1 "$(cdi_specs)"
delete_pod_and_claim p3
check_true "p3 gone: released" wait_until 120 released
echo "FAULT|kubelet SIGKILLed mid-prepare and restarted|a pod with a claim, its prepare held 10 s|pod Running ${took} s after the kubelet's restart, one device, one spec|$(lost "" 0)"

# 4. etcd stopped for 30 s (a hot-plug meanwhile), then started again.
stop agent
agent
pod_with_claim p4
check_true "p4 Running" wait_running 300 p4
held=$(allocated)
w0=$(writes)
a0=$(writes success)
e0=$(metric mock_accel_api_errors_total)
stop etcd
echo "5 1" >$bus/new_device
sleep 30
start etcd etcd $ETCD_ARGS
t0=$(uptime_s)
WAIT_INTERVAL=1 wait_until 300 api_ready || not_ok "kube-apiserver ready again"
check_true "the hot-plug during the outage is published" wait_until 300 has_devices "mock0 mock1 mock2 mock3 mock5"
took=$(since "$t0")
sleep 30
w1=$(writes)
a1=$(writes success)
check_true "slice writes after etcd's outage: $((w1 - w0)) (no storm)" test $((w1 - w0)) -le 10
check_true "p4 still Running" running p4
check "p4's device still allocated" "$held" "$(allocated)"
echo "FAULT|etcd stopped for 30 s, then started|a hot-plug during the outage; a pod running|published ${took} s after etcd's start; $((w1 - w0)) slice writes tried, $((a1 - a0)) accepted, $(($(metric mock_accel_api_errors_total) - e0)) API errors counted by the agent; the pod kept its device|$(lost "$held" 1)"

# 5. kube-apiserver restarted (a hot-unplug while it is down).
w0=$(writes)
a0=$(writes success)
stop kube-apiserver
echo 5 >$bus/del_device
sleep 5
start kube-apiserver kube-apiserver $APISERVER_ARGS
t0=$(uptime_s)
WAIT_INTERVAL=1 wait_until 600 api_ready || { not_ok "kube-apiserver ready again"; api_down_why; }
check_true "the unplug during the restart is published" wait_until 300 has_devices "mock0 mock1 mock2 mock3"
took=$(since "$t0")
sleep 30
w1=$(writes)
a1=$(writes success)
check_true "slice writes after the API server's restart: $((w1 - w0)) (no storm)" test $((w1 - w0)) -le 10
delete_pod_and_claim p4
check_true "p4 gone: released" wait_until 120 released
echo "FAULT|kube-apiserver restarted (SIGTERM, 5 s down)|a hot-unplug while it was down; a pod running|published ${took} s after its start; $((w1 - w0)) slice writes tried, $((a1 - a0)) accepted; the pod deleted and released after|$(lost "" 0)"

# Everything works after all this: a new pod gets a device.
pod_with_claim p5
check_true "a new pod runs" wait_running 300 p5
delete_pod_and_claim p5
check_true "and releases" wait_until 120 released
check_false "no panic in the agent's log" grep -qi panic $LOGS/agent.log
stop agent
finish
