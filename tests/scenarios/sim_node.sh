# The user-space device backend (devices.mode=sim) on the real node, the
# module not loaded: the chart from the registry with devices.mode=sim and
# a sim attach delay, under its least privileges (what Pod Security
# baseline still refuses, and why); the seed's "Verification" and "Testing
# Device Allocation" commands, through binding conditions; the identity
# file in place of the device node; hot-plug and health through the sim's
# own control (`mock-accel-agent ctl` in the agent's container) -> slices,
# taints and the pod's allocatedResourcesStatus; helm uninstall.
# `just sim-node` (agent/tests/node_guest.rs, the_sim_on_a_real_node).
. /guest/lib.sh
. /guest/node.sh
ns=mock-device
agent=mock-accel-node-agent

node_up || { finish; exit 1; }
registry_up || { finish; exit 1; }
CHART_REF=oci://$REGISTRY/charts/mock-device
REG_SETS="--set draDriver.controller.image.repository=$REGISTRY/mock-accel-dra-driver --set draDriver.nodeAgent.image.repository=$REGISTRY/mock-accel-dra-driver"
agent_logs() {
    kubectl get pods -n "$1" -o wide
    kubectl describe pods -n "$1" | tail -n 40
    kubectl logs -n "$1" -l app=$agent --tail=40
}
# What the chart leaves: its namespaced objects, cluster objects, slices.
leftovers() {
    kubectl get daemonsets,deployments,services,serviceaccounts,roles,rolebindings,configmaps,resourcequotas \
        -n "$1" -l app.kubernetes.io/instance=mock-device -o name 2>/dev/null
    kubectl get clusterroles,clusterrolebindings,deviceclasses -l app.kubernetes.io/instance=mock-device -o name 2>/dev/null
    kubectl get leases -n "$1" -o name 2>/dev/null
    kubectl get resourceslices -l driver=$drv -o name 2>/dev/null
}
nothing_left() { [ -z "$(leftovers "$1")" ]; }

check_true "sim: the module not loaded, no /sys/class/mock-accel" \
    sh -c '! grep -q "^mock_accel " /proc/modules && [ ! -e /sys/class/mock-accel ]'
ctl() { kubectl exec -n $ns ds/$agent -- mock-accel-agent ctl "$@"; }
attr() { echo "device.attributes[\"$drv\"].$1"; }
allocated() { jp resourceclaim "$1" default '{.status.allocation.devices.results[*].device}'; }
cond() { jp resourceclaim "$1" default "{.status.devices[0].conditions[?(@.type==\"$2\")].status}"; }
delete_pod() {
    kubectl delete pod "$1" --wait=false >/dev/null
    wait_gone_pod 120 "$1" || not_ok "$1 deleted"
}

# --- Installed with devices.mode=sim, every device fabric-attached (2 s).
# Pod Security enforces baseline here (tests/src/node.rs): what it still
# refuses is the hostPath volumes (the kubelet's plugin directories, the
# CDI directory, the sim's state) and nothing else.
_t0=$(uptime_s)
_out=$(helm install mock-device $CHART_REF --version "$VERSION" --namespace $ns --create-namespace $REG_SETS \
    --set devices.mode=sim --set devices.sim.fabricAttachMs=2000 2>&1)
check_true "sim: helm install --set devices.mode=sim" has "$_out" "STATUS: deployed"
refused() { kubectl get events -n $ns --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}' 2>/dev/null | grep -q 'violates PodSecurity'; }
WAIT_INTERVAL=1 wait_until 60 refused
_why=$(kubectl get events -n $ns --field-selector reason=FailedCreate -o jsonpath='{.items[0].message}' 2>/dev/null)
echo "$_why"
check_true "sim: under Pod Security baseline, refused for its hostPath volumes alone" \
    has "$_why" 'violates PodSecurity "baseline:latest": hostPath volumes (volumes "plugin", "registry", "cdi", "sim")$'
kubectl label namespace $ns pod-security.kubernetes.io/enforce=privileged >/dev/null
WAIT_INTERVAL=1 wait_until 300 kubectl rollout status daemonset/$agent -n $ns --timeout=5s >/dev/null 2>&1 ||
    { not_ok "sim: the node agent DaemonSet rolled out"; agent_logs $ns; }
WAIT_INTERVAL=0.5 wait_until 120 has_devices "mock0 mock1 mock2 mock3" ||
    { not_ok "sim: the sim's devices published (got '$(devices)')"; agent_logs $ns; }
echo "# sim: helm install to the sim's devices published: $(since "$_t0") s"
check "sim: the agent's container: not privileged, every capability dropped, RuntimeDefault seccomp" \
    'false ["ALL"] RuntimeDefault' \
    "$(jp daemonset $agent $ns '{.spec.template.spec.containers[0].securityContext.privileged} {.spec.template.spec.containers[0].securityContext.capabilities.drop} {.spec.template.spec.containers[0].securityContext.seccompProfile.type}')"
check "sim: its volumes, no /sys" "/var/lib/kubelet/plugins/$drv /var/lib/kubelet/plugins_registry /var/run/cdi /run/mock-accel-sim" \
    "$(jp daemonset $agent $ns '{.spec.template.spec.volumes[*].hostPath.path}')"
# The seed's Verification commands.
_ds=$(kubectl get daemonset -n $ns)
echo "$_ds"
check_true "sim: kubectl get daemonset -n $ns: $agent 1 desired, 1 ready" sh -c "echo '$_ds' | grep -Eq '^$agent +1 +1 +1 +1 +1 '"
_rs=$(kubectl get resourceslices -l driver=$drv)
echo "$_rs"
check_true "sim: kubectl get resourceslices -l driver=$drv lists this node's slice" has "$_rs" " $NODE_NAME  *$drv "
_uuid=$(kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[?(@.name=="mock0")].attributes.uuid.string}')
check_true "sim: the devices are this node's own: a version-8 UUID ($_uuid)" \
    sh -c "echo '$_uuid' | grep -Eq '^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'"
bc() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].$2[*]}" 2>/dev/null; }
check "sim: fabric-attached, they declare their binding conditions" "FabricAttached FabricAttachFailed detached" \
    "$(bc mock0 bindingConditions) $(bc mock0 bindingFailureConditions) $(ctl read class/mock0/attach)"

# --- The seed's "Testing Device Allocation": the scheduler waits for the
# agent's attach (binding conditions), then the pod runs.
seed_claim test-claim >/dev/null
seed_pod test-pod "  - name: accel
    resourceClaimName: test-claim" "      - name: accel" >/dev/null
wait_running 180 test-pod ||
    { not_ok "sim: test-pod Running (phase '$(phase test-pod)')"; kubectl describe pod test-pod | tail -n 20; agent_logs $ns; }
dev=$(allocated test-claim)
check "sim: attached, reported (FabricAttached), prepared" "attached True 1" \
    "$(ctl read class/$dev/attach) $(cond test-claim FabricAttached) $(ctl read class/$dev/status)"
pending_event() { kubectl get events -n default --field-selector "involvedObject.name=test-pod,reason=BindingConditionsPending" -o name 2>/dev/null | grep -q .; }
check_true "sim: the scheduler said it waited (BindingConditionsPending)" pending_event
_env=$(kubectl exec test-pod -- env | grep MOCK_ACCEL | sort)
echo "$_env"
check "sim: kubectl exec test-pod -- env | grep MOCK_ACCEL has the seed's three" "MOCK_ACCEL_DEVICE MOCK_ACCEL_PCI MOCK_ACCEL_UUID" \
    "$(echo "$_env" | cut -d= -f1 | grep -xE 'MOCK_ACCEL_(DEVICE|PCI|UUID)' | tr '\n' ' ' | sed 's/ $//')"
_id=$(kubectl exec test-pod -- cat /dev/mock-accel/$dev)
echo "$_id"
check "sim: the identity file in place of the device node reads as the device would" \
    "$(echo "$_env" | grep -E '^MOCK_ACCEL_(DEVICE|UUID|PCI)=' | tr '\n' ' ')" \
    "$(echo "$_id" | grep -E '^MOCK_ACCEL_(DEVICE|UUID|PCI)=' | sort | tr '\n' ' ')"
check_false "sim: and it is read-only" kubectl exec test-pod -- sh -c "echo x >/dev/mock-accel/$dev"

# --- Hot-plug through the sim's control: a waiting pod runs.
claim h-claim mock-accel-pf "$(attr 'pfIndex == 4')"
claim_pod h-pod h-claim
waiting() { kubectl get events -n default --field-selector "involvedObject.name=h-pod,reason=FailedScheduling" -o name 2>/dev/null | grep -q .; }
WAIT_INTERVAL=1 wait_until 120 waiting
check "sim: no mock4, h-pod waits" Pending "$(phase h-pod)"
check "sim: ctl write bus/new_device '4 1'" ok "$(ctl write bus/new_device 4 1)"
check "sim: a bad write gets the module's errno (new_device 4 again)" EEXIST "$(ctl write bus/new_device 4 2>/dev/null)"
check "sim: new_device 99" ERANGE "$(ctl write bus/new_device 99 2>/dev/null)"
WAIT_INTERVAL=0.5 wait_until 60 has_devices "mock0 mock1 mock2 mock3 mock4"
wait_running 180 h-pod || not_ok "sim: h-pod Running after the hot-plug"
check "sim: mock4 hot-plugged: h-pod Running on it" "mock4 Running" "$(allocated h-claim) $(phase h-pod)"

# --- Health through the sim's control: taint, the pod's resource status.
taint() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].taints[0].$2}" 2>/dev/null; }
tainted() { [ "$(taint "$1" value) $(taint "$1" effect)" = "$2 $3" ]; }
untainted() { [ -z "$(taint "$1" key)" ]; }
res_health() { jp pod test-pod default '{.status.containerStatuses[0].allocatedResourcesStatus[*].resources[*].health}'; }
res_is() { [ "$(res_health)" = "$1" ]; }
check "sim: ctl write class/$dev/health failed" ok "$(ctl write class/$dev/health failed)"
check "sim: a bad health value: EINVAL" EINVAL "$(ctl write class/$dev/health broken 2>/dev/null)"
WAIT_INTERVAL=0.5 wait_until 60 tainted $dev failed NoSchedule
check "sim: $dev failed: its device carries the health taint" "$drv/health failed NoSchedule" \
    "$(taint $dev key) $(taint $dev value) $(taint $dev effect)"
WAIT_INTERVAL=1 wait_until 120 res_is Unhealthy
check "sim: test-pod's allocatedResourcesStatus: $dev Unhealthy" Unhealthy "$(res_health)"
check "sim: ctl write class/$dev/health ok" ok "$(ctl write class/$dev/health ok)"
WAIT_INTERVAL=0.5 wait_until 60 untainted $dev
WAIT_INTERVAL=1 wait_until 120 res_is Healthy
check "sim: recovered: no taint, test-pod's $dev Healthy again" ":Healthy" "$(taint $dev key):$(res_health)"

delete_pod h-pod
delete_pod test-pod
kubectl delete resourceclaim h-claim test-claim >/dev/null
released() { [ "$(ctl read class/$dev/status) $(ctl read class/mock4/status)" = "0 0" ]; }
WAIT_INTERVAL=0.5 wait_until 60 released
check "sim: released: free in the sim again" "0 0" "$(ctl read class/$dev/status) $(ctl read class/mock4/status)"
_u=$(helm uninstall mock-device -n $ns --wait --timeout 120s 2>&1)
check_true "sim: helm uninstall" has "$_u" "release \"mock-device\" uninstalled"
WAIT_INTERVAL=1 wait_until 180 nothing_left $ns
check "sim: nothing of the driver left after helm uninstall" "" "$(echo $(leftovers $ns))"
finish
