# The driver on a real Kubernetes v1.37.2 node (tests/src/node.rs): the real
# kube-apiserver, kube-scheduler, kube-controller-manager, kubelet and
# containerd, with the real module. The seed README's "Testing Device
# Allocation" as written, a ResourceClaimTemplate, a VF, hot-plug under a
# waiting pod, kubelet and agent restarts, the controller mode.
. /guest/lib.sh
. /guest/node.sh
cdi=/var/run/cdi

node_up || { finish; exit 1; }
check "kubelet version" v1.37.2 "$(kubectl get node $NODE_NAME -o jsonpath='{.status.nodeInfo.kubeletVersion}')"
check "container runtime" containerd://2.4.2 "$(kubectl get node $NODE_NAME -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')"

check_true "modprobe mock-accel" modprobe mock-accel
put $cls/mock1/sriov_numvfs 2
applied=$(kubectl apply -f /guest/deviceclasses.json 2>&1)
check_true "the chart's DeviceClasses accepted by the real API server ($(echo $applied | tr '\n' ' '))" \
    sh -c "echo '$applied' | grep -q 'deviceclass.resource.k8s.io/mock-accel-pf created'"

start_agent
WAIT_INTERVAL=0.5 wait_until 120 registered
check_true "the real kubelet registered the plugin (NotifyRegistrationStatus: registered)" registered
registered || { grep -i 'plugin\|dra' $LOGS/kubelet.log | tail -n 30; tail -n 20 $LOGS/agent.log; finish; exit 1; }
all="mock0 mock1 mock1-vf0 mock1-vf1 mock2 mock3"
WAIT_INTERVAL=0.5 wait_until 60 has_devices "$all"
check "kubectl get resourceslices -l driver=$drv: the module's devices" "$all" "$(devices)"

# --- The seed's "Testing Device Allocation" (node.sh: seed_claim, seed_pod).
seed_claim test-claim >/dev/null
check_true "test-claim created" kubectl get resourceclaim test-claim -n default
pod() { seed_pod "$@" >/dev/null; } # pod NAME CLAIMS-YAML REFS-YAML
pod test-pod "  - name: accel
    resourceClaimName: test-claim" "      - name: accel"
wait_running 300 test-pod
check "test-pod Running (real scheduler, kubelet, our plugin, containerd's CDI)" Running "$(phase test-pod)"
dev=$(jp resourceclaim test-claim default '{.status.allocation.devices.results[0].device}')
check "allocated by the real scheduler: a PF from our pool" "$drv $NODE_NAME pf" \
    "$(jp resourceclaim test-claim default '{.status.allocation.devices.results[0].driver} {.status.allocation.devices.results[0].pool}') $(cat $cls/$dev/type 2>/dev/null)"
env=$(kubectl exec test-pod -- env | grep MOCK_ACCEL | sort)
echo "$env" | sed 's/^/#   /'
check "kubectl exec test-pod -- env | grep MOCK_ACCEL: the seed's three, the device's own values" \
    "MOCK_ACCEL_DEVICE=$dev MOCK_ACCEL_PCI=$(basename "$(readlink $cls/$dev/device)") MOCK_ACCEL_UUID=$(cat $cls/$dev/uuid)" \
    "$(echo "$env" | grep -E '^MOCK_ACCEL_(UUID|PCI|DEVICE)=' | tr '\n' ' ' | sed 's/ $//')"
check_true "the device node /dev/mock-accel/$dev is there and readable in the container" \
    kubectl exec test-pod -- sh -c "test -c /dev/mock-accel/$dev && head -c 1 /dev/mock-accel/$dev >/dev/null"
check "sysfs status of $dev" 1 "$(cat $cls/$dev/status)"
uid=$(jp resourceclaim test-claim default '{.metadata.uid}')
check_true "CDI spec for the claim" test -f $cdi/k8s.$drv-accel_$uid.json
check "claim status.devices written by the driver (real authorization)" "$drv" \
    "$(jp resourceclaim test-claim default '{.status.devices[0].driver}')"
kubectl delete pod test-pod --wait=true --timeout=120s >/dev/null
unprepared() { [ "$(cat $cls/$dev/status)" = 0 ] && [ ! -e $cdi/k8s.$drv-accel_$uid.json ]; }
WAIT_INTERVAL=0.5 wait_until 60 unprepared
check "pod deleted -> unprepared: status 0" 0 "$(cat $cls/$dev/status)"
check_false "and the CDI spec is gone" test -e $cdi/k8s.$drv-accel_$uid.json
kubectl delete resourceclaim test-claim >/dev/null

# --- A ResourceClaimTemplate for a VF: the controller-manager makes the claim.
kubectl apply -f - >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata:
  name: one-vf
  namespace: default
spec:
  spec:
    devices:
      requests:
      - name: vf
        exactly:
          deviceClassName: mock-accel-vf
EOF
pod vf-pod "  - name: vf
    resourceClaimTemplateName: one-vf" "      - name: vf"
wait_running 300 vf-pod
check "vf-pod Running" Running "$(phase vf-pod)"
claim=$(jp pod vf-pod default '{.status.resourceClaimStatuses[0].resourceClaimName}')
check_true "the controller-manager made claim '$claim' from the template" kubectl get resourceclaim "$claim" -n default
vf=$(jp resourceclaim "$claim" default '{.status.allocation.devices.results[0].device}')
check "a VF was allocated" vf "$(cat $cls/$(echo $vf | tr - _)/type 2>/dev/null)"
check "its status is 1" 1 "$(cat $cls/$(echo $vf | tr - _)/status 2>/dev/null)"
check "the pod sees it (its kernel name)" "MOCK_ACCEL_DEVICE=$(echo $vf | tr - _)" "$(kubectl exec vf-pod -- env | grep '^MOCK_ACCEL_DEVICE=')"
kubectl delete pod vf-pod --wait=true --timeout=120s >/dev/null
claim_gone() { ! kubectl get resourceclaim "$claim" -n default >/dev/null 2>&1; }
WAIT_INTERVAL=1 wait_until 120 claim_gone
check_true "the template's claim is deleted with its pod" claim_gone
vf_free() { [ "$(cat $cls/$(echo $vf | tr - _)/status)" = 0 ]; }
WAIT_INTERVAL=0.5 wait_until 60 vf_free
check "and its VF is free" 0 "$(cat $cls/$(echo $vf | tr - _)/status)"

# --- Hot-plug: a pod that wants 5 PFs (4 exist) waits; a new PF lets the
# real scheduler place it.
kubectl apply -f - >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata:
  name: five-pfs
  namespace: default
spec:
  spec:
    devices:
      requests:
      - name: pfs
        exactly:
          deviceClassName: mock-accel-pf
          count: 5
EOF
pod big-pod "  - name: pfs
    resourceClaimTemplateName: five-pfs" "      - name: pfs"
unschedulable() { kubectl get events -n default --field-selector involvedObject.name=big-pod,reason=FailedScheduling -o name 2>/dev/null | grep -q .; }
WAIT_INTERVAL=1 wait_until 120 unschedulable
check_true "5 PFs wanted, 4 exist: the scheduler says FailedScheduling" unschedulable
check "big-pod Pending" Pending "$(phase big-pod)"
t0=$(uptime_s)
put $bus/new_device 4
wait_running 300 big-pod
check "new_device 4 -> big-pod Running" Running "$(phase big-pod)"
echo "# hot-plug -> pod Running: $(since "$t0") s"
check "five PFs prepared" "1 1 1 1 1" "$(cat $cls/mock0/status $cls/mock1/status $cls/mock2/status $cls/mock3/status $cls/mock4/status | tr '\n' ' ' | sed 's/ $//')"
# A device nobody uses leaves: the VFs of mock1 are free (its PF is in use:
# sriov_numvfs would refuse), so add a PF and remove it.
put $bus/new_device 9
WAIT_INTERVAL=0.5 wait_until 60 has_devices "$all mock4 mock9"
check "mock9 published" "$all mock4 mock9" "$(devices)"
put $bus/del_device 9
WAIT_INTERVAL=0.5 wait_until 60 has_devices "$all mock4"
check "del_device 9 -> it leaves the slice" "$all mock4" "$(devices)"
check "big-pod unaffected" Running "$(phase big-pod)"

# --- kubelet restart: it wipes the node's slices at start; the agent puts
# them back; the running pod keeps its devices.
writes0=$(metric mock_accel_slice_writes_total)
uids() { kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].metadata.uid}' 2>/dev/null; }
before=$(uids)
stop kubelet
start kubelet kubelet $KUBELET_ARGS
WAIT_INTERVAL=1 wait_until 300 node_ready
check_true "kubelet restarted, node Ready" node_ready
# The kubelet wipes the slices in the background after its start: wait for
# new slice objects (the old ones deleted) that list every device again.
recreated() { _u=$(uids); [ -n "$_u" ] && [ "$_u" != "$before" ] && has_devices "$all mock4"; }
WAIT_INTERVAL=0.5 wait_until 120 recreated
check_true "the kubelet wiped our slices at its start and the agent put them back" recreated
check "slices back after the kubelet's restart" "$all mock4" "$(devices)"
echo "# slice writes around the kubelet restart: $writes0 -> $(metric mock_accel_slice_writes_total)"
check "big-pod still Running" Running "$(phase big-pod)"
check "its devices still prepared" "1 1 1 1 1" "$(cat $cls/mock0/status $cls/mock1/status $cls/mock2/status $cls/mock3/status $cls/mock4/status | tr '\n' ' ' | sed 's/ $//')"

# --- agent restart while the pod runs: unprepare still works afterwards.
stop agent
start_agent
WAIT_INTERVAL=0.5 wait_until 120 registered
check_true "the restarted agent is registered again" registered
kubectl delete pod big-pod --wait=true --timeout=120s >/dev/null
all_free() { [ "$(cat $cls/mock0/status $cls/mock1/status $cls/mock2/status $cls/mock3/status $cls/mock4/status | tr -d '\n')" = 00000 ]; }
WAIT_INTERVAL=0.5 wait_until 120 all_free
check_true "big-pod deleted after the agent's restart: all five unprepared" all_free
check "no CDI spec left" "" "$(ls $cdi 2>/dev/null | grep "^k8s.$drv")"

# --- the controller mode against the real API server.
NODE_NAME=$NODE_NAME POD_NAMESPACE=kube-system start controller \
    mock-accel-agent --mode=controller --admin-address=127.0.0.1:8081 --v=2
leads() { [ -n "$(jp lease $drv-controller kube-system '{.spec.holderIdentity}')" ]; }
fleet_devices() {
    guest-tool http GET http://127.0.0.1:8081/metrics 2>/dev/null |
        awk -v n="node=\"$NODE_NAME\"" '/^mock_accel_fleet_devices\{/ && index($0, n) { s += $2 } END { print s + 0 }'
}
seven() { [ "$(fleet_devices)" = 7 ]; }
WAIT_INTERVAL=1 wait_until 120 leads
check_true "the controller holds the leader Lease $drv-controller" leads
WAIT_INTERVAL=1 wait_until 120 seven
check "the controller's fleet view: devices on $NODE_NAME" 7 "$(fleet_devices)"

stop controller
stop agent
[ "$_fails" = 0 ] || { node_logs; echo "--- kubelet on plugins"; grep -i 'plugin\|dra' $LOGS/kubelet.log | tail -n 30; }
finish
