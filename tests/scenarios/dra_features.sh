# The DRA features the driver offers, each shown with the real
# kube-apiserver, kube-scheduler, kubelet and containerd of a v1.37.2 node
# (tests/src/node.rs), the agent run as a node process, the real module.
#
# Partitionable devices (KEP-4815): each PF's memory is a shared counter
# set that the PF consumes whole and each VF in part, so the real scheduler
# never gives a PF and one of its VFs at once, across claims or inside one.
# With the API server's DRAPartitionableDevices gate off (a 1.34/1.35
# cluster), the agent notices that the fields are dropped, says so, and the
# PF/VF exclusion falls back to prepare time.
. /guest/lib.sh
. /guest/node.sh

node_up || { finish; exit 1; }
check_true "modprobe mock-accel" modprobe mock-accel
put $cls/mock1/sriov_numvfs 2
kubectl apply -f /guest/deviceclasses.json >/dev/null
start_agent
WAIT_INTERVAL=0.5 wait_until 120 registered ||
    { not_ok "the kubelet registered the plugin"; tail -n 20 $LOGS/agent.log; finish; exit 1; }
all="mock0 mock1 mock1-vf0 mock1-vf1 mock2 mock3"
WAIT_INTERVAL=0.5 wait_until 60 has_devices "$all"
check "the module's devices published" "$all" "$(devices)"

attr() { echo "device.attributes[\"$drv\"].$1"; }
PF1=$(attr 'pfIndex == 1')
VF_OF_1=$(attr 'physfn == "mock1"')
PF2=$(attr 'pfIndex == 2')
# unschedulable POD: the scheduler said FailedScheduling for it
unschedulable() { kubectl get events -n default --field-selector "involvedObject.name=$1,reason=FailedScheduling" -o name 2>/dev/null | grep -q .; }
allocated() { jp resourceclaim "$1" default '{.status.allocation.devices.results[*].device}'; }
# kind_of CLAIM: what it got, VF numbers left out ("mock2 mock1-vf")
kind_of() { allocated "$1" | sed 's/[0-9]*$//'; }
delete_pod() {
    kubectl delete pod "$1" --wait=false >/dev/null
    WAIT_INTERVAL=0.5 wait_until 120 gone_pod "$1" || not_ok "$1 deleted"
}
sets() { kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.sharedCounters[*].name}' 2>/dev/null; }
consumes() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].consumesCounters[0].counterSet}" 2>/dev/null; }

# --- The slices: counter sets in a slice of their own, devices consuming.
check "a counter set per PF" "mock0 mock1 mock2 mock3" "$(sets)"
check "mock1's VFs consume from mock1's set" "mock1 mock1" "$(consumes mock1-vf0) $(consumes mock1-vf1)"
check "mock1 consumes from its own set" mock1 "$(consumes mock1)"
check "the counter set holds the PF's memory (its capacity)" \
    "$(kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[?(@.name=="mock1")].capacity.memory.value}')" \
    "$(kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.sharedCounters[?(@.name=="mock1")].counters.memory.value}')"
check "the agent says counters are published" 1 "$(metric mock_accel_shared_counters)"

# --- Across claims: mock1 held, a claim for one of its VFs cannot be placed.
claim pf-claim mock-accel-pf "$PF1"
claim_pod pf-pod pf-claim
WAIT_INTERVAL=1 wait_until 180 running pf-pod || not_ok "pf-pod Running"
check "pf-pod holds mock1" mock1 "$(allocated pf-claim)"
claim vf-claim mock-accel-vf "$VF_OF_1"
claim_pod vf-pod vf-claim
WAIT_INTERVAL=1 wait_until 120 unschedulable vf-pod
echo "# $(kubectl get events -n default --field-selector involvedObject.name=vf-pod,reason=FailedScheduling -o jsonpath='{.items[0].message}')"
check_true "a VF of the held PF: the real scheduler does not place it (FailedScheduling)" unschedulable vf-pod
check "and allocates nothing for it" "" "$(allocated vf-claim)"
delete_pod pf-pod
WAIT_INTERVAL=1 wait_until 180 running vf-pod
check "mock1 released: vf-pod gets one of its VFs" mock1-vf "$(kind_of vf-claim)"
# And the other way: a VF held, the PF cannot be placed.
kubectl delete resourceclaim pf-claim >/dev/null
claim pf-claim mock-accel-pf "$PF1"
claim_pod pf-pod pf-claim
WAIT_INTERVAL=1 wait_until 120 unschedulable pf-pod
check_true "a VF of mock1 held: the PF cannot be placed" unschedulable pf-pod
check "pf-pod Pending" Pending "$(phase pf-pod)"
delete_pod vf-pod
WAIT_INTERVAL=1 wait_until 180 running pf-pod
check "the VF released: pf-pod gets mock1" mock1 "$(allocated pf-claim)"
delete_pod pf-pod
kubectl delete resourceclaim pf-claim vf-claim >/dev/null

# --- Inside one claim: a PF and its own VF never; a PF and another's VF yes.
claim both-claim mock-accel-pf "$PF1" mock-accel-vf "$VF_OF_1"
claim_pod both-pod both-claim
WAIT_INTERVAL=1 wait_until 120 unschedulable both-pod
check_true "one claim for mock1 and one of its VFs: not placed" unschedulable both-pod
check "and nothing allocated" "" "$(allocated both-claim)"
delete_pod both-pod
kubectl delete resourceclaim both-claim >/dev/null
claim pair-claim mock-accel-pf "$PF2" mock-accel-vf "$VF_OF_1"
claim_pod pair-pod pair-claim
WAIT_INTERVAL=1 wait_until 180 running pair-pod
check "one claim for mock2 and a VF of mock1: placed" "mock2 mock1-vf" "$(kind_of pair-claim)"
delete_pod pair-pod
kubectl delete resourceclaim pair-claim >/dev/null

# --- Hot-plug: a new PF gets its set; its VFs consume from it.
put $bus/new_device 5
put $cls/mock5/sriov_numvfs 1
WAIT_INTERVAL=0.5 wait_until 60 has_devices "$all mock5 mock5-vf0"
check "hot-plugged mock5: its counter set" "mock0 mock1 mock2 mock3 mock5" "$(sets)"
check "and its VF consumes from it" mock5 "$(consumes mock5-vf0)"
put $cls/mock5/sriov_numvfs 0
put $bus/del_device 5
WAIT_INTERVAL=0.5 wait_until 60 has_devices "$all"
check "mock5 removed: its set too" "mock0 mock1 mock2 mock3" "$(sets)"

# --- The API server with DRAPartitionableDevices off (as 1.34/1.35 have
# it): it drops the fields on create. The agent, started against it, says
# so and publishes without; the scheduler then may give mock1 and its VF
# to two claims, and the agent refuses the second at prepare time.
stop agent
kubectl delete resourceslices -l driver=$drv >/dev/null
stop kube-apiserver
start kube-apiserver kube-apiserver $APISERVER_ARGS --feature-gates=DRAPartitionableDevices=false
WAIT_INTERVAL=1 wait_until 300 api_ready || { not_ok "kube-apiserver back with the gate off"; node_logs; finish; exit 1; }
start_agent
WAIT_INTERVAL=0.5 wait_until 120 has_devices "$all" || not_ok "published with the gate off"
counters_off() { [ "$(metric mock_accel_shared_counters)" = 0 ]; }
WAIT_INTERVAL=0.5 wait_until 60 counters_off
check "gate off: the agent's metric says counters are not published" 0 "$(metric mock_accel_shared_counters)"
_said=$(grep -c 'does not keep shared counters' $LOGS/agent.log)
check_true "gate off: the agent's log says why ($(grep -o 'does not keep shared counters[^"]*' $LOGS/agent.log | head -n 1 | cut -c1-80))" [ "$_said" -ge 1 ]
check "gate off: no counter sets in the pool" "" "$(sets)"
check "gate off: one slice, devices only" 1 "$(kubectl get resourceslices -l driver=$drv -o name | wc -l)"
claim pf-claim mock-accel-pf "$PF1"
claim_pod pf-pod pf-claim
WAIT_INTERVAL=1 wait_until 180 running pf-pod || not_ok "gate off: pf-pod Running"
claim vf-claim mock-accel-vf "$VF_OF_1"
claim_pod vf-pod vf-claim
vf_allocated() { [ -n "$(allocated vf-claim)" ]; }
WAIT_INTERVAL=1 wait_until 120 vf_allocated
check "gate off: the scheduler gives a VF of the held mock1" mock1-vf "$(kind_of vf-claim)"
refused() { kubectl get events -n default --field-selector involvedObject.name=vf-pod -o jsonpath='{.items[*].message}' 2>/dev/null | grep -q 'its PF mock1 is prepared for claim default/pf-claim'; }
WAIT_INTERVAL=1 wait_until 120 refused
check_true "gate off: the agent refuses it at prepare time, naming the PF's claim" refused
check "gate off: vf-pod does not start" Pending "$(phase vf-pod)"
delete_pod vf-pod
delete_pod pf-pod
kubectl delete resourceclaim pf-claim vf-claim >/dev/null
stop agent
finish
