# The DRA features the driver offers, each shown with the real
# kube-apiserver, kube-scheduler, kubelet and containerd of a v1.37.2 node
# (tests/src/node.rs), the agent run as a node process, the real module.
#
# Partitionable devices (KEP-4815): each PF's memory is a shared counter
# set that the PF consumes whole and each VF in part, so the real scheduler
# never gives a PF and one of its VFs at once, across claims or inside one.
# (With the API server's DRAPartitionableDevices gate off, as 1.34/1.35
# have it, the agent notices that the fields are dropped and says so:
# real_cluster's with_the_gate_off_the_agent_publishes_without_counters;
# the PF/VF exclusion falls back to prepare time: plugin_api. Restarting
# the emulated node's API server for it here cost minutes of every run.)
#
# Device taints from health (KEP-5055): the module's health=failed puts the
# taint <driver>/health=failed on the device (NoSchedule by default), which
# the real scheduler respects unless a claim tolerates it; recovery takes
# it away; degraded is informational (effect None). With NoExecute the real
# kube-controller-manager evicts the pods that use a failed device and do
# not tolerate it.
#
# Device health to the pod: the container's allocatedResourcesStatus
# follows its device, from the agent's v1 health stream.
#
# Extended resources backed by DRA: a pod asking `limits: {<driver>/vf: 1}`
# and no claim gets a VF through our plugin.
#
# Consumable capacity (KEP-5075): with --consumable-capacity each PF is
# shared by memory; the real scheduler hands out shares (rounded up to the
# 1Gi grain), never more than the PF has, and a shared PF still excludes
# its VFs; each container sees its share.
#
# Binding conditions (KEP-5007): fabric-attached devices (the module's
# fabric_attach_ms) declare FabricAttached; the real scheduler holds the
# pod until the agent attached the device and said so in the claim, and
# lets a failed attach's allocation go and tries again.
#
# Device metadata for containers (KEP-5304): a container reads its claim's
# devices and attributes from the file the plugin mounts.
#
# Prioritized lists (firstAvailable) and admin access, the scheduler's and
# the API server's part, with the agent's: an admin claim gets a VF already
# held and its pod runs beside the holder's (a held PF, whose counter set
# is used up, the real scheduler does not give to an admin claim).
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
    wait_gone_pod 120 "$1" || not_ok "$1 deleted"
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
wait_running 180 pf-pod || not_ok "pf-pod Running"
check "pf-pod holds mock1" mock1 "$(allocated pf-claim)"
claim vf-claim mock-accel-vf "$VF_OF_1"
claim_pod vf-pod vf-claim
WAIT_INTERVAL=1 wait_until 120 unschedulable vf-pod
echo "# $(kubectl get events -n default --field-selector involvedObject.name=vf-pod,reason=FailedScheduling -o jsonpath='{.items[0].message}')"
check_true "a VF of the held PF: the real scheduler does not place it (FailedScheduling)" unschedulable vf-pod
check "and allocates nothing for it" "" "$(allocated vf-claim)"
delete_pod pf-pod
wait_running 180 vf-pod
check "mock1 released: vf-pod gets one of its VFs" mock1-vf "$(kind_of vf-claim)"
# And the other way: a VF held, the PF cannot be placed.
kubectl delete resourceclaim pf-claim >/dev/null
claim pf-claim mock-accel-pf "$PF1"
claim_pod pf-pod pf-claim
WAIT_INTERVAL=1 wait_until 120 unschedulable pf-pod
check_true "a VF of mock1 held: the PF cannot be placed" unschedulable pf-pod
check "pf-pod Pending" Pending "$(phase pf-pod)"
delete_pod vf-pod
wait_running 180 pf-pod
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
wait_running 180 pair-pod
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

# --- Device taints from health.
taint() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].taints[0].$2}" 2>/dev/null; }
tainted() { [ "$(taint "$1" value) $(taint "$1" effect)" = "$2 $3" ]; }
untainted() { [ -z "$(taint "$1" key)" ]; }
put $cls/mock2/health failed
WAIT_INTERVAL=0.5 wait_until 60 tainted mock2 failed NoSchedule
check "mock2 failed: its device carries the health taint" "$drv/health failed NoSchedule" \
    "$(taint mock2 key) $(taint mock2 value) $(taint mock2 effect)"
check_true "the API server stamped the taint's time ($(taint mock2 timeAdded))" [ -n "$(taint mock2 timeAdded)" ]
check "the agent counts it" 1 "$(metric 'mock_accel_tainted_devices{effect="NoSchedule"}')"
claim t-claim mock-accel-pf "$PF2"
claim_pod t-pod t-claim
WAIT_INTERVAL=1 wait_until 120 unschedulable t-pod
check_true "a claim for the tainted mock2: the real scheduler does not place it" unschedulable t-pod
check "and allocates nothing" "" "$(allocated t-claim)"
TOLERATE=NoSchedule claim tol-claim mock-accel-pf "$PF2"
claim_pod tol-pod tol-claim
tol_allocated() { [ -n "$(allocated tol-claim)" ]; }
WAIT_INTERVAL=1 wait_until 120 tol_allocated
check "a claim that tolerates the taint: the scheduler gives it mock2" mock2 "$(allocated tol-claim)"
check "with the toleration in its allocation" "$drv/health" \
    "$(jp resourceclaim tol-claim default '{.status.allocation.devices.results[0].tolerations[0].key}')"
# The module itself refuses to allocate a failed device: prepare says so.
unhealthy_refused() { kubectl get events -n default --field-selector involvedObject.name=tol-pod -o jsonpath='{.items[*].message}' 2>/dev/null | grep -q 'health=failed'; }
WAIT_INTERVAL=1 wait_until 120 unhealthy_refused
check_true "and its prepare is refused: the module will not allocate a failed device" unhealthy_refused
delete_pod tol-pod
kubectl delete resourceclaim tol-claim >/dev/null
put $cls/mock2/health ok
WAIT_INTERVAL=0.5 wait_until 60 untainted mock2
check "mock2 recovered: the taint is gone" "" "$(taint mock2 key)"
check "the agent's count too" 0 "$(metric 'mock_accel_tainted_devices{effect="NoSchedule"}')"
wait_running 180 t-pod
check "and the waiting pod now runs with mock2" "Running mock2" "$(phase t-pod) $(allocated t-claim)"
put $cls/mock3/health degraded
WAIT_INTERVAL=0.5 wait_until 60 tainted mock3 degraded None
check "mock3 degraded: an informational taint (effect None)" "degraded None" "$(taint mock3 value) $(taint mock3 effect)"
claim d-claim mock-accel-pf "$(attr 'pfIndex == 3')"
claim_pod d-pod d-claim
wait_running 180 d-pod
check "which does not keep a claim from it" "Running mock3" "$(phase d-pod) $(allocated d-claim)"
# NoExecute: the agent restarted with it; mock2 and mock3 in use, mock3's
# claim tolerating NoExecute; both fail: the real kube-controller-manager
# evicts t-pod, d-pod stays.
delete_pod d-pod
kubectl delete resourceclaim d-claim >/dev/null
put $cls/mock3/health ok
TOLERATE=NoExecute claim d-claim mock-accel-pf "$(attr 'pfIndex == 3')"
claim_pod d-pod d-claim
wait_running 180 d-pod || not_ok "d-pod Running"
stop agent
start_agent --health-taints=NoExecute
WAIT_INTERVAL=0.5 wait_until 120 registered || not_ok "the agent back, NoExecute"
put $cls/mock2/health failed
put $cls/mock3/health failed
WAIT_INTERVAL=0.5 wait_until 60 tainted mock2 failed NoExecute
check "NoExecute: mock2 and mock3 carry NoExecute taints" "NoExecute NoExecute" "$(taint mock2 effect) $(taint mock3 effect)"
wait_gone_pod 120 t-pod
check_true "the real kube-controller-manager evicted t-pod, which uses mock2" gone_pod t-pod
evicted=$(kubectl get events -n default --field-selector involvedObject.name=t-pod -o jsonpath='{.items[*].reason}' 2>/dev/null)
echo "# t-pod's events: $evicted"
sleep 5
check "d-pod, whose claim tolerates NoExecute, still runs" Running "$(phase d-pod)"
# Device health to the pod (KEP-4680): the real kubelet reads the agent's
# health stream (v1, the newest both know) into the container's status.
res_health() { jp pod d-pod default '{.status.containerStatuses[0].allocatedResourcesStatus[*].resources[*].health}'; }
res_unhealthy() { [ "$(res_health)" = Unhealthy ]; }
res_healthy() { [ "$(res_health)" = Healthy ]; }
WAIT_INTERVAL=1 wait_until 120 res_unhealthy
check "d-pod's allocatedResourcesStatus: mock3 Unhealthy ($(jp pod d-pod default '{.status.containerStatuses[0].allocatedResourcesStatus}' | cut -c1-200))" \
    Unhealthy "$(res_health)"
check_true "the kubelet watches the v1 health stream" [ "$(metric 'mock_accel_plugin_requests_total{api="v1",method="NodeWatchResources"}')" -ge 1 ]
put $cls/mock2/health ok
put $cls/mock3/health ok
both_clear() { untainted mock2 && untainted mock3; }
WAIT_INTERVAL=0.5 wait_until 60 both_clear
check "both recovered: no taints left" "" "$(taint mock2 key)$(taint mock3 key)"
WAIT_INTERVAL=1 wait_until 120 res_healthy
check "and d-pod's mock3 Healthy again" Healthy "$(res_health)"
delete_pod d-pod
kubectl delete resourceclaim t-claim d-claim >/dev/null

# --- Prioritized lists: the first alternative that can be had.
prio_claim() {
    kubectl apply -f - >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: $1, namespace: default}
spec:
  devices:
    requests:
    - name: a
      firstAvailable:
      - name: whole
        deviceClassName: mock-accel-pf
        selectors: [{cel: {expression: '$PF2'}}]
      - name: part
        deviceClassName: mock-accel-vf
EOF
}
request_of() { jp resourceclaim "$1" default '{.status.allocation.devices.results[*].request}'; }
prio_claim p1
claim_pod p1-pod p1
wait_running 180 p1-pod || not_ok "p1-pod Running"
check "firstAvailable, mock2 free: the first alternative" "a/whole mock2" "$(request_of p1) $(allocated p1)"
prio_claim p2
claim_pod p2-pod p2
wait_running 180 p2-pod || not_ok "p2-pod Running"
check "firstAvailable, mock2 held: the second, a VF" "a/part mock1-vf" "$(request_of p2) $(kind_of p2)"

# --- Admin access: devices already held, given to an admin claim too.
refused_admin=$(kubectl apply -f - 2>&1 >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: admin-claim, namespace: default}
spec:
  devices:
    requests:
    - name: a
      exactly: {deviceClassName: mock-accel-pf, adminAccess: true}
EOF
)
check_true "admin access outside an admin namespace: the API server refuses ($(echo "$refused_admin" | cut -c1-160))" \
    has "$refused_admin" "admin-access"
kubectl create namespace dra-admin >/dev/null
kubectl label namespace dra-admin resource.kubernetes.io/admin-access=true >/dev/null
# admin_claim NAME CLASS CEL: a claim with admin access in dra-admin
admin_claim() {
    kubectl apply -f - >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: $1, namespace: dra-admin}
spec:
  devices:
    requests:
    - name: a
      exactly:
        deviceClassName: $2
        adminAccess: true
        selectors: [{cel: {expression: '$3'}}]
EOF
}
# The VF p2-pod holds takes half its PF's memory: an admin claim for it fits.
held_vf=$(allocated p2)
held_fn=$(echo "$held_vf" | tr - _)
admin_claim admin-vf mock-accel-vf "$(attr "uuid == \"$(cat $cls/$held_fn/uuid)\"")"
NS=dra-admin claim_pod admin-vf-pod admin-vf
wait_running 180 admin-vf-pod dra-admin || not_ok "admin-vf-pod Running"
check "the admin claim gets $held_vf, held by p2-pod, with admin access" "$held_vf true" \
    "$(jp resourceclaim admin-vf dra-admin '{.status.allocation.devices.results[0].device} {.status.allocation.devices.results[0].adminAccess}')"
check "both pods run" "Running Running" "$(phase p2-pod) $(phase admin-vf-pod dra-admin)"
check "the container sees it" "MOCK_ACCEL_DEVICE=$held_fn" "$(kubectl exec -n dra-admin admin-vf-pod -- env | grep '^MOCK_ACCEL_DEVICE=')"
kubectl delete pod -n dra-admin admin-vf-pod --wait=false >/dev/null
wait_gone_pod 120 admin-vf-pod dra-admin || not_ok "admin-vf-pod gone"
check "the admin pod gone: $held_vf still allocated to p2-pod in the module" 1 "$(cat $cls/$held_fn/status)"
# mock2, held by p1-pod, consumes all of its counter set: the real
# scheduler counts an admin claim's device against the shared counters as
# well, so it does not give a held PF to an admin claim.
admin_claim admin-pf mock-accel-pf "$PF2"
NS=dra-admin claim_pod admin-pf-pod admin-pf
admin_unschedulable() { kubectl get events -n dra-admin --field-selector "involvedObject.name=admin-pf-pod,reason=FailedScheduling" -o name 2>/dev/null | grep -q .; }
WAIT_INTERVAL=1 wait_until 120 admin_unschedulable
check_true "a PF held, with shared counters: the real scheduler does not give it to an admin claim" admin_unschedulable
kubectl delete namespace dra-admin --wait=false >/dev/null
delete_pod p2-pod
delete_pod p1-pod
kubectl delete resourceclaim p1 p2 >/dev/null

# --- Extended resources backed by DRA: no claim, a limit of the class's
# extended resource; the scheduler makes the claim, our plugin prepares it.
seed_pod ext-pod "" "" "$drv/vf: 1" >/dev/null
wait_running 180 ext-pod || not_ok "ext-pod Running"
ext_claim=$(jp pod ext-pod default '{.status.extendedResourceClaimStatus.resourceClaimName}')
check_true "the scheduler made a claim for $drv/vf: 1 (${ext_claim:-none})" [ -n "$ext_claim" ]
check "and allocated a VF in it" mock1-vf "$(kind_of "$ext_claim")"
ext_dev=$(allocated "$ext_claim")
check "the container sees that VF (our CDI spec)" "MOCK_ACCEL_DEVICE=$(echo "$ext_dev" | tr - _)" \
    "$(kubectl exec ext-pod -- env | grep '^MOCK_ACCEL_DEVICE=')"
check "the module holds it" 1 "$(cat $cls/$(echo "$ext_dev" | tr - _)/status)"
delete_pod ext-pod
gone_claim() { ! kubectl get resourceclaim "$1" -n default >/dev/null 2>&1; }
WAIT_INTERVAL=1 wait_until 120 gone_claim "$ext_claim"
check_true "the pod gone: its claim too" gone_claim "$ext_claim"
check "and the VF released" 0 "$(cat $cls/$(echo "$ext_dev" | tr - _)/status)"

# --- Device metadata for containers (KEP-5304): a pod whose claim comes
# from a template reads its request's devices and their attributes where
# the KEP puts them, by the pod's own name for the claim (the claim's name
# is generated); the file is a stream, v1beta1 first, and read-only.
kubectl apply -f - >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: meta-tpl, namespace: default}
spec:
  spec:
    devices:
      requests:
      - name: a
        exactly: {deviceClassName: mock-accel-vf}
EOF
seed_pod meta-pod "  - name: acc
    resourceClaimTemplateName: meta-tpl" "      - name: acc" >/dev/null
wait_running 180 meta-pod || not_ok "meta-pod Running"
meta_claim=$(jp pod meta-pod default '{.status.resourceClaimStatuses[0].resourceClaimName}')
meta_dev=$(allocated "$meta_claim")
meta_file=/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/acc/a/$drv-metadata.json
meta=$(kubectl exec meta-pod -- cat "$meta_file")
first_version=$(echo "$meta" | grep -m1 '"apiVersion"' | sed 's/.*"apiVersion": "\([^"]*\)".*/\1/')
has() { echo "$meta" | grep -qF -- "$1" && echo yes || echo no; }
check "meta-pod reads its device metadata: v1beta1 first, 2 versions, its claim ($meta_claim), pod claim acc, device $meta_dev and its UUID" \
    "metadata.resource.k8s.io/v1beta1 2 yes yes yes yes" \
    "$first_version $(echo "$meta" | grep -c '"kind": "DeviceMetadata"') $(has "\"name\": \"$meta_claim\"") $(has '"podClaimName": "acc"') $(has "\"name\": \"$meta_dev\"") $(has "$(cat $cls/$(echo "$meta_dev" | tr - _)/uuid)")"
check_true "and it is read-only in the container" sh -c "! kubectl exec meta-pod -- sh -c 'echo x >> $meta_file' 2>/dev/null"
delete_pod meta-pod
kubectl delete resourceclaimtemplate meta-tpl >/dev/null
WAIT_INTERVAL=1 wait_until 120 gone_claim "$meta_claim"
meta_gone() { ! ls /var/lib/kubelet/plugins/$drv/dra-device-metadata/ 2>/dev/null | grep -q .; }
WAIT_INTERVAL=0.5 wait_until 30 meta_gone
check_true "the pod gone: the node keeps no metadata file" meta_gone

# --- Consumable capacity (KEP-5075): the agent restarted with
# --consumable-capacity publishes each PF shared by memory; claims ask for
# a share, the real scheduler hands out shares (rounded up to the 1Gi
# grain) and never more than the PF has; each container sees its share.
stop agent
start_agent --consumable-capacity
WAIT_INTERVAL=0.5 wait_until 120 registered || not_ok "the agent back, consumable capacity"
mock2_field() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"mock2\")].$1}" 2>/dev/null; }
shared_pf() { [ "$(mock2_field allowMultipleAllocations)" = true ]; }
WAIT_INTERVAL=0.5 wait_until 60 shared_pf
check "mock2 shared by memory: allowMultipleAllocations, a request policy (default all of it, 1Gi grain)" \
    "true 16Gi 16Gi 1Gi 1Gi" \
    "$(mock2_field allowMultipleAllocations) $(mock2_field capacity.memory.value) $(mock2_field capacity.memory.requestPolicy.default) $(mock2_field capacity.memory.requestPolicy.validRange.min) $(mock2_field capacity.memory.requestPolicy.validRange.step)"
check "the agent's metric says so" 1 "$(metric mock_accel_consumable_capacity)"
# mem_claim NAME AMOUNT [CEL]: a claim for a share of a PF's memory (mock2's
# unless CEL says which)
mem_claim() {
    kubectl apply -f - >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: $1, namespace: default}
spec:
  devices:
    requests:
    - name: a
      exactly:
        deviceClassName: mock-accel-pf
        selectors: [{cel: {expression: '${3:-$PF2}'}}]
        capacity: {requests: {memory: $2}}
EOF
}
share_of() { jp resourceclaim "$1" default '{.status.allocation.devices.results[0].shareID}'; }
consumed() { jp resourceclaim "$1" default '{.status.allocation.devices.results[0].consumedCapacity.memory}'; }
for _s in s1 s2; do
    mem_claim $_s 6Gi
    claim_pod $_s-pod $_s
done
wait_running 180 s1-pod || not_ok "s1-pod Running"
wait_running 180 s2-pod || not_ok "s2-pod Running"
check "two claims of 6Gi: both get mock2, 6Gi each" "mock2 mock2 6Gi 6Gi" "$(allocated s1) $(allocated s2) $(consumed s1) $(consumed s2)"
check_true "each its own share ID ($(share_of s1), $(share_of s2))" \
    [ -n "$(share_of s1)" -a -n "$(share_of s2)" -a "$(share_of s1)" != "$(share_of s2)" ]
check "each container sees its share" "MOCK_ACCEL_MEMORY=6Gi MOCK_ACCEL_SHARE_ID=$(share_of s2)" \
    "$(kubectl exec s2-pod -- env | grep -E '^MOCK_ACCEL_(MEMORY|SHARE_ID)=' | sort | tr '\n' ' ' | sed 's/ $//')"
check "the module holds mock2" 1 "$(cat $cls/mock2/status)"
# 1500Mi: rounded up to the grain, 2Gi; 14Gi of 16Gi given out.
mem_claim s3 1500Mi
claim_pod s3-pod s3
wait_running 180 s3-pod || not_ok "s3-pod Running"
check "1500Mi is rounded up to the 1Gi grain" "mock2 2Gi" "$(allocated s3) $(consumed s3)"
check "the claim's status names its share" "$(share_of s3)" \
    "$(jp resourceclaim s3 default '{.status.devices[0].shareID}')"
# A third 6Gi: 2Gi left, it does not fit; nor does a claim for all of it.
mem_claim s4 6Gi
claim_pod s4-pod s4
claim whole mock-accel-pf "$PF2"
claim_pod whole-pod whole
WAIT_INTERVAL=1 wait_until 120 unschedulable s4-pod
WAIT_INTERVAL=1 wait_until 120 unschedulable whole-pod
check "6Gi more than the 2Gi left: the real scheduler does not over-commit (nothing allocated, Pending)" \
    "::Pending" ":$(allocated s4):$(phase s4-pod)"
check "a claim naming no amount takes all of it: it waits too" "::Pending" ":$(allocated whole):$(phase whole-pod)"
# s1 gone: its 6Gi back, s4 gets it; the module still holds mock2.
delete_pod s1-pod
kubectl delete resourceclaim s1 >/dev/null
wait_running 180 s4-pod || not_ok "s4-pod Running"
check "s1 released: s4's 6Gi share fits now" "mock2 6Gi Running" "$(allocated s4) $(consumed s4) $(phase s4-pod)"
check "mock2 still held in the module (s2, s3, s4)" 1 "$(cat $cls/mock2/status)"
for _s in s2 s3 s4; do delete_pod $_s-pod; done
kubectl delete resourceclaim s2 s3 s4 >/dev/null
# The last share gone: whole-pod gets all of mock2.
wait_running 180 whole-pod || not_ok "whole-pod Running"
check "every share released: the claim for all of it gets mock2, 16Gi" "mock2 16Gi MOCK_ACCEL_MEMORY=16Gi" \
    "$(allocated whole) $(consumed whole) $(kubectl exec whole-pod -- env | grep '^MOCK_ACCEL_MEMORY=')"
delete_pod whole-pod
kubectl delete resourceclaim whole >/dev/null
check "and released: mock2 free in the module" 0 "$(cat $cls/mock2/status)"
# A shared PF takes its whole counter set at its first share: while a 2Gi
# share of mock1 is held, none of its VFs is given; then one is.
mem_claim m1 2Gi "$PF1"
claim_pod m1-pod m1
wait_running 180 m1-pod || not_ok "m1-pod Running"
claim vfx mock-accel-vf "$VF_OF_1"
claim_pod vfx-pod vfx
WAIT_INTERVAL=1 wait_until 120 unschedulable vfx-pod
check "a 2Gi share of mock1 held: its VFs are not given (the PF's counter set is taken whole)" \
    "mock1 2Gi ::Pending" "$(allocated m1) $(consumed m1) :$(allocated vfx):$(phase vfx-pod)"
delete_pod m1-pod
kubectl delete resourceclaim m1 >/dev/null
wait_running 180 vfx-pod || not_ok "vfx-pod Running"
check "the share released: the VF claim gets one of mock1's VFs" "mock1-vf Running" "$(kind_of vfx) $(phase vfx-pod)"
delete_pod vfx-pod
kubectl delete resourceclaim vfx >/dev/null

# --- Binding conditions (KEP-5007): fabric-attached devices. The module
# reloaded with fabric_attach_ms=10000: every function needs a 10 s attach
# before use. Its devices carry the binding conditions; the real scheduler
# holds a pod in PreBind until the agent, having attached the device,
# reports FabricAttached in the claim's status; a failed attach
# (fail_attach) makes the scheduler give the allocation up and try again.
stop agent
check_true "the module reloaded with fabric_attach_ms" \
    sh -c 'modprobe -r mock-accel && modprobe mock-accel num_pfs=2 fabric_attach_ms=10000'
start_agent
WAIT_INTERVAL=0.5 wait_until 120 has_devices "mock0 mock1"
bc() { kubectl get resourceslices -l driver=$drv -o jsonpath="{.items[*].spec.devices[?(@.name==\"$1\")].$2[*]}" 2>/dev/null; }
check "the devices declare their binding conditions" "FabricAttached FabricAttachFailed" \
    "$(bc mock0 bindingConditions) $(bc mock0 bindingFailureConditions)"
claim f-claim mock-accel-pf "$(attr 'pfIndex == 0')"
claim_pod f-pod f-claim
f_allocated() { [ -n "$(allocated f-claim)" ]; }
WAIT_INTERVAL=0.5 wait_until 120 f_allocated
check "allocated mock0, attaching: the pod is not bound" "mock0 attaching :" \
    "$(allocated f-claim) $(cat $cls/mock0/attach) :$(jp pod f-pod default '{.spec.nodeName}')"
check "the allocation carries the binding conditions" FabricAttached \
    "$(jp resourceclaim f-claim default '{.status.allocation.devices.results[0].bindingConditions[*]}')"
wait_running 180 f-pod
cond() { jp resourceclaim "$1" default "{.status.devices[0].conditions[?(@.type==\"$2\")].status}"; }
check "attached: the agent reported it, the pod bound and runs, the plugin prepared it" \
    "attached True True Running 1" \
    "$(cat $cls/mock0/attach) $(cond f-claim FabricAttached) $(cond f-claim Ready) $(phase f-pod) $(cat $cls/mock0/status)"
pending_event() { kubectl get events -n default --field-selector "involvedObject.name=f-pod,reason=BindingConditionsPending" -o name 2>/dev/null | grep -q .; }
check_true "the scheduler said it waited (BindingConditionsPending)" pending_event
delete_pod f-pod
kubectl delete resourceclaim f-claim >/dev/null
detached() { [ "$(cat $cls/$1/attach)" = detached ]; }
WAIT_INTERVAL=0.5 wait_until 60 detached mock0
check "released: the agent detached mock0" detached "$(cat $cls/mock0/attach)"
# A failed attach: mock1's next attach fails.
put $cls/mock1/fail_attach 1
claim g-claim mock-accel-pf "$(attr 'pfIndex == 1')"
claim_pod g-pod g-claim
wait_running 300 g-pod
check "mock1's first attach failed, the scheduler let it go and tried again: Running" "Running 0 attached" \
    "$(phase g-pod) $(cat $cls/mock1/fail_attach) $(cat $cls/mock1/attach)"
check "the agent reported one failure and two attaches" "1 2" \
    "$(metric 'mock_accel_fabric_attaches_total{result="failed"}') $(metric 'mock_accel_fabric_attaches_total{result="attached"}')"
delete_pod g-pod
kubectl delete resourceclaim g-claim >/dev/null
WAIT_INTERVAL=0.5 wait_until 60 detached mock1
check "and detached again" detached "$(cat $cls/mock1/attach)"

stop agent
finish
