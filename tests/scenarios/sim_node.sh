# The user-space device backend (devices.mode=sim) on the real node, the
# module NOT loaded: the chart installed from the registry with
# devices.mode=sim under its least privileges (what Pod Security baseline
# still refuses, and why); the seed's "Verification" and "Testing Device
# Allocation" commands; the identity file in place of the device node; the
# agent restarted with its devices kept; hot-plug and health through the
# sim's own control (`mock-accel-agent ctl` in the agent's container) ->
# slices, taints and the pod's allocatedResourcesStatus; binding conditions
# with a sim attach delay; helm uninstall.
. /guest/lib.sh
. /guest/node.sh
ns=mock-device
agent=mock-accel-node-agent

node_up || { finish; exit 1; }
check_true "the module is not loaded, no /sys/class/mock-accel" \
    sh -c '! grep -q "^mock_accel " /proc/modules && [ ! -e /sys/class/mock-accel ]'
registry_up || { finish; exit 1; }

CHART_REF=oci://$REGISTRY/charts/mock-device
SETS="--set draDriver.controller.image.repository=$REGISTRY/mock-accel-dra-driver --set draDriver.nodeAgent.image.repository=$REGISTRY/mock-accel-dra-driver --set devices.mode=sim"
ctl() { kubectl exec -n $ns ds/$agent -- mock-accel-agent ctl "$@"; }
attr() { echo "device.attributes[\"$drv\"].$1"; }
allocated() { jp resourceclaim "$1" default '{.status.allocation.devices.results[*].device}'; }
delete_pod() {
    kubectl delete pod "$1" --wait=false >/dev/null
    wait_gone_pod 120 "$1" || not_ok "$1 deleted"
}
agent_logs() {
    kubectl get pods -n $ns -o wide
    kubectl describe pods -n $ns | tail -n 40
    kubectl logs -n $ns -l app=$agent --tail=40
}

# --- Installed with devices.mode=sim. Pod Security enforces baseline here
# (tests/src/node.rs): what it still refuses is the hostPath volumes (the
# kubelet's plugin directories, the CDI directory, the sim's state), and
# nothing else: not privileged, no capability, no /sys.
_t0=$(uptime_s)
_out=$(helm install mock-device $CHART_REF --version "$VERSION" --namespace $ns --create-namespace $SETS 2>&1)
check_true "helm install --set devices.mode=sim" has "$_out" "STATUS: deployed"
refused() { kubectl get events -n $ns --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}' 2>/dev/null | grep -q 'violates PodSecurity'; }
WAIT_INTERVAL=1 wait_until 60 refused
_why=$(kubectl get events -n $ns --field-selector reason=FailedCreate -o jsonpath='{.items[0].message}' 2>/dev/null)
echo "$_why"
check_true "under Pod Security baseline: refused for its hostPath volumes" \
    has "$_why" 'violates PodSecurity "baseline:latest": hostPath volumes (volumes "plugin", "registry", "cdi", "sim")$'
kubectl label namespace $ns pod-security.kubernetes.io/enforce=privileged >/dev/null
WAIT_INTERVAL=1 wait_until 300 kubectl rollout status daemonset/$agent -n $ns --timeout=5s >/dev/null 2>&1 ||
    { not_ok "the node agent DaemonSet rolled out"; agent_logs; }
WAIT_INTERVAL=0.5 wait_until 120 has_devices "mock0 mock1 mock2 mock3" ||
    { not_ok "the sim's devices published (got '$(devices)')"; agent_logs; }
echo "# sim: helm install to the sim's devices published: $(since "$_t0") s"
_sc=$(jp daemonset $agent $ns '{.spec.template.spec.containers[0].securityContext}')
echo "$_sc"
check "the agent's container: not privileged, every capability dropped, RuntimeDefault seccomp" \
    'false ["ALL"] RuntimeDefault' \
    "$(jp daemonset $agent $ns '{.spec.template.spec.containers[0].securityContext.privileged} {.spec.template.spec.containers[0].securityContext.capabilities.drop} {.spec.template.spec.containers[0].securityContext.seccompProfile.type}')"
check "its volumes: no /sys" "/var/lib/kubelet/plugins/$drv /var/lib/kubelet/plugins_registry /var/run/cdi /run/mock-accel-sim" \
    "$(jp daemonset $agent $ns '{.spec.template.spec.volumes[*].hostPath.path}')"
WAIT_INTERVAL=1 wait_until 120 kubectl rollout status deployment/mock-accel-controller -n $ns --timeout=5s >/dev/null 2>&1 ||
    not_ok "the controller rolled out"
# The seed's Verification commands.
_ds=$(kubectl get daemonset -n $ns)
echo "$_ds"
check_true "kubectl get daemonset -n $ns: $agent 1 desired, 1 ready" sh -c "echo '$_ds' | grep -Eq '^$agent +1 +1 +1 +1 +1 '"
_rs=$(kubectl get resourceslices -l driver=$drv)
echo "$_rs"
check_true "kubectl get resourceslices -l driver=$drv lists this node's slice" has "$_rs" " $NODE_NAME  *$drv "
uuid_of() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].attributes.uuid.string}"; }
check_true "the sim's devices are this node's: a version-8 UUID ($(uuid_of mock0))" \
    sh -c "echo '$(uuid_of mock0)' | grep -Eq '^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'"

# --- The seed's "Testing Device Allocation", and what the container gets.
seed_claim test-claim >/dev/null
seed_pod test-pod "  - name: accel
    resourceClaimName: test-claim" "      - name: accel" >/dev/null
wait_running 180 test-pod || { not_ok "test-pod Running (phase '$(phase test-pod)')"; kubectl describe pod test-pod | tail -n 20; agent_logs; }
_env=$(kubectl exec test-pod -- env | grep MOCK_ACCEL | sort)
echo "$_env"
check "kubectl exec test-pod -- env | grep MOCK_ACCEL has the seed's three" "MOCK_ACCEL_DEVICE MOCK_ACCEL_PCI MOCK_ACCEL_UUID" \
    "$(echo "$_env" | cut -d= -f1 | grep -xE 'MOCK_ACCEL_(DEVICE|PCI|UUID)' | tr '\n' ' ' | sed 's/ $//')"
dev=$(echo "$_env" | sed -n 's/^MOCK_ACCEL_DEVICE=//p')
_id=$(kubectl exec test-pod -- cat /dev/mock-accel/$dev)
echo "$_id"
check "the identity file in place of the device node: what the module's device reads" \
    "$(echo "$_env" | grep -E '^MOCK_ACCEL_(DEVICE|UUID|PCI)=' | sort | tr '\n' ' ')" \
    "$(echo "$_id" | grep -E '^MOCK_ACCEL_(DEVICE|UUID|PCI)=' | sort | tr '\n' ' ')"
check_false "and it is read-only" kubectl exec test-pod -- sh -c "echo x >/dev/mock-accel/$dev"
check "the sim marks it allocated" 1 "$(ctl read class/$dev/status)"
check "the agent reported the prepared device in the claim's status" "$drv" \
    "$(jp resourceclaim test-claim default '{.status.devices[0].driver}')"

# --- Hot-plug through the sim's control: a pending pod runs.
claim h-claim mock-accel-pf "$(attr 'pfIndex == 4')"
claim_pod h-pod h-claim
pending() { kubectl get events -n default --field-selector "involvedObject.name=h-pod,reason=FailedScheduling" -o name 2>/dev/null | grep -q .; }
WAIT_INTERVAL=1 wait_until 120 pending
check "no mock4: h-pod waits" Pending "$(phase h-pod)"
check "ctl write bus/new_device 4 1" ok "$(ctl write bus/new_device 4 1)"
check "a bad write gets the module's errno: new_device 4 again" EEXIST "$(ctl write bus/new_device 4 2>/dev/null)"
check "new_device 99" ERANGE "$(ctl write bus/new_device 99 2>/dev/null)"
WAIT_INTERVAL=0.5 wait_until 60 has_devices "mock0 mock1 mock2 mock3 mock4"
wait_running 180 h-pod || not_ok "h-pod Running after the hot-plug"
check "mock4 hot-plugged: h-pod Running on it" "mock4 Running" "$(allocated h-claim) $(phase h-pod)"

# --- The agent restarted: its devices kept (state outlives the pod).
_old=$(kubectl get pods -n $ns -l app=$agent -o jsonpath='{.items[0].metadata.name}')
kubectl delete pod -n $ns "$_old" --wait=false >/dev/null
new_agent() { _p=$(kubectl get pods -n $ns -l app=$agent -o jsonpath='{.items[?(@.status.phase=="Running")].metadata.name}'); [ -n "$_p" ] && [ "$_p" != "$_old" ]; }
WAIT_INTERVAL=1 wait_until 180 new_agent || not_ok "a new agent pod"
WAIT_INTERVAL=1 wait_until 120 kubectl rollout status daemonset/$agent -n $ns --timeout=5s >/dev/null 2>&1
check "restarted: mock4 still there, $dev and mock4 still allocated" "mock0 mock1 mock2 mock3 mock4 1 1" \
    "$(devices) $(ctl read class/$dev/status) $(ctl read class/mock4/status)"

# --- Health through the sim's control: taint, the pod's resource status.
taint() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].taints[0].$2}" 2>/dev/null; }
tainted() { [ "$(taint "$1" value) $(taint "$1" effect)" = "$2 $3" ]; }
untainted() { [ -z "$(taint "$1" key)" ]; }
res_health() { jp pod test-pod default '{.status.containerStatuses[0].allocatedResourcesStatus[*].resources[*].health}'; }
res_is() { [ "$(res_health)" = "$1" ]; }
check "ctl write class/$dev/health failed" ok "$(ctl write class/$dev/health failed)"
check "a bad health value: EINVAL" EINVAL "$(ctl write class/$dev/health broken 2>/dev/null)"
WAIT_INTERVAL=0.5 wait_until 60 tainted $dev failed NoSchedule
check "$dev failed: its device carries the health taint" "$drv/health failed NoSchedule" \
    "$(taint $dev key) $(taint $dev value) $(taint $dev effect)"
WAIT_INTERVAL=1 wait_until 120 res_is Unhealthy
check "test-pod's allocatedResourcesStatus: $dev Unhealthy" Unhealthy "$(res_health)"
check "ctl write class/$dev/health ok" ok "$(ctl write class/$dev/health ok)"
WAIT_INTERVAL=0.5 wait_until 60 untainted $dev
check "recovered: the taint is gone" "" "$(taint $dev key)"
WAIT_INTERVAL=1 wait_until 120 res_is Healthy
check "and test-pod's $dev Healthy again" Healthy "$(res_health)"
delete_pod h-pod
delete_pod test-pod
kubectl delete resourceclaim h-claim test-claim >/dev/null
released() { [ "$(ctl read class/$dev/status) $(ctl read class/mock4/status)" = "0 0" ]; }
WAIT_INTERVAL=0.5 wait_until 60 released
check "released: the sim's devices free again" "0 0" "$(ctl read class/$dev/status) $(ctl read class/mock4/status)"

# --- Binding conditions with a sim attach delay (fabric-attached devices):
# the scheduler holds the pod until the agent has attached the device.
_out=$(helm upgrade mock-device $CHART_REF --version "$VERSION" --namespace $ns --reuse-values --set devices.sim.fabricAttachMs=5000 --set devices.sim.pfs=2 2>&1)
check_true "helm upgrade --set devices.sim.fabricAttachMs=5000" has "$_out" "STATUS: deployed"
WAIT_INTERVAL=1 wait_until 300 kubectl rollout status daemonset/$agent -n $ns --timeout=5s >/dev/null 2>&1
bc() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].$2[*]}" 2>/dev/null; }
declared() { [ "$(devices)" = "mock0 mock1" ] && [ -n "$(bc mock0 bindingConditions)" ]; }
WAIT_INTERVAL=0.5 wait_until 120 declared
check "the sim's new devices declare their binding conditions" "FabricAttached FabricAttachFailed" \
    "$(bc mock0 bindingConditions) $(bc mock0 bindingFailureConditions)"
check "and start detached" detached "$(ctl read class/mock0/attach)"
claim f-claim mock-accel-pf "$(attr 'pfIndex == 0')"
claim_pod f-pod f-claim
f_allocated() { [ -n "$(allocated f-claim)" ]; }
WAIT_INTERVAL=0.5 wait_until 120 f_allocated
check "allocated mock0, attaching: the pod is not bound" "mock0 attaching :" \
    "$(allocated f-claim) $(ctl read class/mock0/attach) :$(jp pod f-pod default '{.spec.nodeName}')"
wait_running 180 f-pod || not_ok "f-pod Running"
cond() { jp resourceclaim "$1" default "{.status.devices[0].conditions[?(@.type==\"$2\")].status}"; }
check "attached: reported, the pod bound and running, the device allocated" "attached True Running 1" \
    "$(ctl read class/mock0/attach) $(cond f-claim FabricAttached) $(phase f-pod) $(ctl read class/mock0/status)"
pending_event() { kubectl get events -n default --field-selector "involvedObject.name=f-pod,reason=BindingConditionsPending" -o name 2>/dev/null | grep -q .; }
check_true "the scheduler said it waited (BindingConditionsPending)" pending_event
delete_pod f-pod
kubectl delete resourceclaim f-claim >/dev/null

_u=$(helm uninstall mock-device -n $ns --wait --timeout 120s 2>&1)
check_true "helm uninstall" has "$_u" "release \"mock-device\" uninstalled"
finish
