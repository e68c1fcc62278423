# Devices and faults declared through the API (DeviceScenario) on the real
# node, in both modes: the chart from the registry (its CRD, admission
# policy and rights), then, per mode (the module loaded with fabric
# attaches of 2 s; the sim with the same), a spec refused at admission, a
# spec the node cannot realise (the condition, nothing applied), a declared
# hot-plug with an attach delay (a waiting pod Running, its binding
# conditions held for the delay), a declared failure (taint, the pod's
# allocatedResourcesStatus) and its recovery, faults on a schedule (how
# late they fired, by the agent's clock and seen from the API), helm
# uninstall. `just declared-node` (agent/tests/node_guest.rs).
. /guest/lib.sh
. /guest/node.sh
ns=mock-device
agent=mock-accel-node-agent

node_up || { finish; exit 1; }
registry_up || { finish; exit 1; }
CHART_REF=oci://$REGISTRY/charts/mock-device
REG_SETS="--set draDriver.controller.image.repository=$REGISTRY/mock-accel-dra-driver --set draDriver.nodeAgent.image.repository=$REGISTRY/mock-accel-dra-driver"
agent_logs() {
    kubectl get pods -n $ns -o wide
    kubectl logs -n $ns -l app=$agent --tail=60
}
allocated() { jp resourceclaim "$1" default '{.status.allocation.devices.results[*].device}'; }
attr() { echo "device.attributes[\"$drv\"].$1"; }
delete_pod() {
    kubectl delete pod "$1" --wait=false >/dev/null
    wait_gone_pod 120 "$1" || not_ok "$1 deleted"
}
# scenario SPEC-YAML: DeviceScenario "s" for this node, created or updated
scenario() {
    kubectl apply -f - 2>&1 <<EOF
apiVersion: $drv/v1alpha1
kind: DeviceScenario
metadata: {name: s}
spec:
  nodeName: $NODE_NAME
$1
EOF
}
# applied REASON: the node's entry says REASON for the current generation
entry() { jp devicescenario s "" "{.status.nodes[?(@.node==\"$NODE_NAME\")].$1}"; }
reason_is() {
    [ "$(entry 'conditions[?(@.type=="Applied")].reason')" = "$1" ] &&
        [ "$(entry observedGeneration)" = "$(jp devicescenario s "" '{.metadata.generation}')" ]
}
taint() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].taints[0].$2}" 2>/dev/null; }
tainted() { [ "$(taint "$1" value) $(taint "$1" effect)" = "$2 $3" ]; }
untainted() { [ -z "$(taint "$1" key)" ]; }
res_health() { jp pod "$1" default '{.status.containerStatuses[0].allocatedResourcesStatus[*].resources[*].health}'; }
res_is() { [ "$(res_health "$1")" = "$2" ]; }
# the agent's Event notes for REASON about scenario s
notes() {
    kubectl get events.events.k8s.io -n default -o jsonpath="{range .items[?(@.reason==\"$1\")]}{.note}{\"\\n\"}{end}" 2>/dev/null
}

# mode MODE: the whole run with devices.mode=MODE
mode() {
    m=$1
    _t0=$(uptime_s)
    if [ "$m" = kernel ]; then
        check_true "$m: modprobe mock-accel num_pfs=2 fabric_attach_ms=2000" modprobe mock-accel num_pfs=2 fabric_attach_ms=2000
        _sets=""
    else
        check_true "$m: the module not loaded" sh -c '! grep -q "^mock_accel " /proc/modules'
        _sets="--set devices.mode=sim --set devices.sim.pfs=2 --set devices.sim.fabricAttachMs=2000"
        kubectl create namespace $ns >/dev/null 2>&1
        kubectl label namespace $ns pod-security.kubernetes.io/enforce=privileged --overwrite >/dev/null
    fi
    _out=$(helm install mock-device $CHART_REF --version "$VERSION" --namespace $ns --create-namespace $REG_SETS $_sets 2>&1)
    check_true "$m: helm install" has "$_out" "STATUS: deployed"
    WAIT_INTERVAL=1 wait_until 300 kubectl rollout status daemonset/$agent -n $ns --timeout=5s >/dev/null 2>&1 ||
        { not_ok "$m: the node agent rolled out"; agent_logs; }
    WAIT_INTERVAL=0.5 wait_until 120 has_devices "mock0 mock1" ||
        { not_ok "$m: mock0 mock1 published (got '$(devices)')"; agent_logs; }
    echo "# $m: helm install to devices published: $(since "$_t0") s"

    # Refused at admission: the message a user sees.
    _e=$(scenario "  pfs: [{id: 64}]")
    echo "# $_e"
    check_true "$m: a PF id above 63 refused at admission" has "$_e" "id in body should be less than or equal to 63"
    if [ "$m" = sim ]; then
        _e=$(scenario "  pfs: [{id: 0, vfs: 9}]")
        echo "# $_e"
        check_true "$m: 9 VFs refused with the chart's max_vfs" has "$_e" "vfs is above max_vfs=8 (set by the chart in devices.sim)"
    else
        _e=$(scenario "  faults: [{device: mock1, period: 1s}]")
        echo "# $_e"
        check_true "$m: a flap without its length refused" has "$_e" "a flap needs for"
    fi

    # A spec the node cannot realise: the condition, nothing applied.
    _out=$(scenario "  pfs: [{id: 0, numaNode: 1}, {id: 1, vfs: 2}]")
    WAIT_INTERVAL=0.5 wait_until 60 reason_is NotRealisable ||
        { not_ok "$m: NotRealisable reported"; agent_logs; }
    _msg=$(entry 'conditions[?(@.type=="Applied")].message')
    echo "# $_msg"
    check_true "$m: mock0 on NUMA node 0 is not moved: NotRealisable, saying why" has "$_msg" "a PF is not moved"
    check "$m: and nothing half-applied (mock1 has no VFs)" "mock0 mock1" "$(devices)"

    # Declared hot-plug with an attach delay: a waiting pod runs, its
    # binding conditions held for the delay and the attach.
    claim h-claim mock-accel-pf "$(attr 'pfIndex == 4')"
    claim_pod h-pod h-claim
    waiting() { kubectl get events -n default --field-selector "involvedObject.name=h-pod,reason=FailedScheduling" -o name 2>/dev/null | grep -q .; }
    WAIT_INTERVAL=1 wait_until 120 waiting
    check "$m: no mock4: h-pod waits" Pending "$(phase h-pod)"
    _t=$(uptime_s)
    _out=$(scenario "  pfs: [{id: 0}, {id: 1}, {id: 4, numaNode: 0}]
  attach: {delay: 5s}")
    WAIT_INTERVAL=0.5 wait_until 60 reason_is Applied || { not_ok "$m: the hot-plug applied"; agent_logs; }
    check "$m: declared: mock4 hot-plugged (published)" "mock0 mock1 mock4" "$(devices)"
    wait_running 240 h-pod || { not_ok "$m: h-pod Running"; kubectl describe pod h-pod | tail -n 20; agent_logs; }
    _took=$(since "$_t")
    check "$m: h-pod Running on mock4" "mock4 Running" "$(allocated h-claim) $(phase h-pod)"
    _alloc=$(jp resourceclaim h-claim default '{.status.allocation.allocationTimestamp}')
    _att=$(jp resourceclaim h-claim default '{.status.devices[0].conditions[?(@.type=="FabricAttached")].lastTransitionTime}')
    _wait=$(($(date -d "$(echo $_att | tr T ' ' | tr -d Z)" +%s) - $(date -d "$(echo $_alloc | tr T ' ' | tr -d Z)" +%s)))
    echo "# $m: scenario applied to h-pod Running: $_took s; allocated $_alloc, FabricAttached $_att ($_wait s: delay 5 s + attach 2 s)"
    check_true "$m: the binding conditions waited the delay and the attach (>= 7 s, got $_wait s)" test "$_wait" -ge 7

    # A declared failure: taint, the pod's allocatedResourcesStatus; the
    # recovery (the device left out of devices) clears both.
    _out=$(scenario "  pfs: [{id: 0}, {id: 1}, {id: 4}]
  devices: [{name: mock4, health: failed}]")
    WAIT_INTERVAL=0.5 wait_until 60 tainted mock4 failed NoSchedule || not_ok "$m: mock4 tainted"
    check "$m: declared failed: mock4 carries the health taint" "failed NoSchedule" "$(taint mock4 value) $(taint mock4 effect)"
    WAIT_INTERVAL=1 wait_until 120 res_is h-pod Unhealthy
    check "$m: h-pod's allocatedResourcesStatus: Unhealthy" Unhealthy "$(res_health h-pod)"
    # A manual write on the node (an operator's echo, or ctl in sim mode):
    # reported as drift, not fought.
    if [ "$m" = kernel ]; then put $cls/mock4/health ok; else kubectl exec -n $ns ds/$agent -- mock-accel-agent ctl write class/mock4/health ok >/dev/null; fi
    drifted() { [ "$(entry 'conditions[?(@.type=="Drifted")].status')" = True ]; }
    WAIT_INTERVAL=0.5 wait_until 60 drifted
    _d=$(entry 'conditions[?(@.type=="Drifted")].message')
    echo "# $_d"
    check_true "$m: a manual write of health ok reported (Drifted)" has "$_d" "mock4: health is ok on the node, the scenario says failed"
    sleep 2
    _h=$(if [ "$m" = kernel ]; then cat $cls/mock4/health; else kubectl exec -n $ns ds/$agent -- mock-accel-agent ctl read class/mock4/health; fi)
    check "$m: and not fought: mock4 still ok" ok "$_h"
    _out=$(scenario "  pfs: [{id: 0}, {id: 1}, {id: 4}]")
    WAIT_INTERVAL=0.5 wait_until 60 untainted mock4
    WAIT_INTERVAL=1 wait_until 120 res_is h-pod Healthy
    check "$m: declared recovery: no taint, h-pod Healthy again" ":Healthy" "$(taint mock4 key):$(res_health h-pod)"

    # Faults on a schedule: mock1 failed 3 s after the apply, for 10 s (a
    # look from here takes a kubectl, ~2 s of the guest's CPU: a shorter
    # fault can fall between two looks).
    _t=$(uptime_s)
    _out=$(scenario "  pfs: [{id: 0}, {id: 1}, {id: 4}]
  faults: [{device: mock1, after: 3s, for: 10s}]")
    WAIT_INTERVAL=0.2 wait_until 60 tainted mock1 failed NoSchedule || not_ok "$m: the scheduled fault"
    _on=$(since "$_t")
    WAIT_INTERVAL=0.2 wait_until 60 untainted mock1 || not_ok "$m: the scheduled recovery"
    _off=$(since "$_t")
    echo "# $m: kubectl apply -> mock1's taint in the API: $_on s (due at 3 s), gone at $_off s (due at 13 s)"
    _late=$(notes FaultStarted | grep "on mock1" | tail -n 1)
    echo "# $m: the agent: $_late"
    check_true "$m: the fault fired by the agent's clock within 500 ms of its time" \
        sh -c "echo '$_late' | grep -Eq ', ([0-9]{1,2}|[1-4][0-9]{2}) ms after its time'"
    check_true "$m: seen in the API after its time (3 s) and ended after 13 s" \
        awk "BEGIN { exit !($_on >= 3 && $_off >= 13) }"

    kubectl delete devicescenario s >/dev/null
    delete_pod h-pod
    kubectl delete resourceclaim h-claim >/dev/null
    _u=$(helm uninstall mock-device -n $ns --wait --timeout 120s 2>&1)
    check_true "$m: helm uninstall" has "$_u" "release \"mock-device\" uninstalled"
    WAIT_INTERVAL=1 wait_until 120 sh -c "! kubectl get resourceslices -l driver=$drv -o name 2>/dev/null | grep -q ."
    if [ "$m" = kernel ]; then
        check_true "$m: rmmod mock-accel" modprobe -r mock-accel
    fi
}

mode sim
mode kernel
finish
