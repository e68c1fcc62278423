# The chart installed into the real node (tests/src/node.rs,
# `node::guest`) as its users install it: the seed README's install
# commands with only the registry host changed (the chart from an OCI
# registry in the guest, the images pulled from it by containerd), the node
# agent and the controller as the chart's pods under the chart's RBAC and
# admission policies, its "Verification" and "Testing Device Allocation"
# commands as written, `helm test`, `helm uninstall`, and the upgrade from
# a seed release.
. /guest/lib.sh
. /guest/node.sh
. /guest/monitoring.sh
ns=mock-device
agent=mock-accel-node-agent

node_up || { finish; exit 1; }
check_true "modprobe mock-accel" modprobe mock-accel
put $cls/mock1/sriov_numvfs 2

_section=$(uptime_s)
# section NAME: how long the section that ends here took
section() { echo "# section $1: $(since "$_section") s"; _section=$(uptime_s); }
registry_up || { finish; exit 1; }
section registry

CHART_REF=oci://$REGISTRY/charts/mock-device
# The seed's "Custom Image Registry" flags, with this registry's host.
REG_SETS="--set draDriver.controller.image.repository=$REGISTRY/mock-accel-dra-driver --set draDriver.nodeAgent.image.repository=$REGISTRY/mock-accel-dra-driver"

slices() { kubectl get resourceslices -l driver=$drv -o name 2>/dev/null; }
no_slices() { [ -z "$(slices)" ]; }
no_namespace() { ! kubectl get namespace "$1" >/dev/null 2>&1; }
# What the module made, as the agent names the devices (mock1_vf0 → mock1-vf0).
all_devices=$(ls $cls | tr _ - | sort | tr '\n' ' ' | sed 's/ $//')

# What the chart leaves on the cluster, by kind: every object labelled as
# this release's, cluster-wide (the keep-policy Namespace aside).
leftovers() {
    for _k in daemonsets deployments services serviceaccounts roles rolebindings configmaps leases resourcequotas; do
        kubectl get "$_k" -A -l app.kubernetes.io/instance=mock-device -o name 2>/dev/null
    done
    for _k in clusterroles clusterrolebindings deviceclasses validatingadmissionpolicies validatingadmissionpolicybindings; do
        kubectl get "$_k" -l app.kubernetes.io/instance=mock-device -o name 2>/dev/null
    done
    # The agents' and the controller's Leases carry no chart label.
    kubectl get leases -n "$1" -o name 2>/dev/null
    slices
}

nothing_left() { [ -z "$(leftovers "$1")" ]; }

# agent_logs NS: the chart's pods' logs (for failures)
agent_logs() {
    kubectl get pods -n "$1" -o wide
    kubectl describe pods -n "$1" | tail -n 40
    kubectl logs -n "$1" -l app=$agent --tail=40
    kubectl logs -n "$1" -l app=mock-accel-controller --tail=20
}

# installed NS WHAT: the node agent and controller Running and ready, this
# node's devices published: each the seed's "Verification" command
installed() {
    _ns=$1
    _what=$2
    _t=$(uptime_s)
    WAIT_INTERVAL=1 wait_until 300 kubectl rollout status daemonset/$agent -n "$_ns" --timeout=5s >/dev/null 2>&1 ||
        { not_ok "$_what: the node agent DaemonSet rolled out"; agent_logs "$_ns"; return 1; }
    WAIT_INTERVAL=0.5 wait_until 120 has_devices "$all_devices" ||
        { not_ok "$_what: the node's devices published (got '$(devices)')"; agent_logs "$_ns"; return 1; }
    echo "# $_what: install to first slice $(since "$_t0") s (helm install $_install_s s, then $(since "$_t") s)"
    WAIT_INTERVAL=1 wait_until 120 kubectl rollout status deployment/mock-accel-controller -n "$_ns" --timeout=5s >/dev/null 2>&1 ||
        { not_ok "$_what: the controller Deployment rolled out"; agent_logs "$_ns"; return 1; }
    _ds=$(kubectl get daemonset -n "$_ns")
    echo "$_ds"
    check_true "$_what: kubectl get daemonset -n $_ns: $agent 1 desired, 1 ready" \
        sh -c "echo '$_ds' | grep -Eq '^$agent +1 +1 +1 +1 +1 '"
    _rs=$(kubectl get resourceslices -l driver=$drv)
    echo "$_rs"
    check_true "$_what: kubectl get resourceslices -l driver=$drv lists this node's slice" \
        has "$_rs" " $NODE_NAME  *$drv "
    _dc=$(kubectl get deviceclass | grep mock-accel)
    echo "$_dc"
    check "$_what: kubectl get deviceclass | grep mock-accel" "mock-accel-pf mock-accel-vf" "$(echo "$_dc" | awk '{print $1}' | tr '\n' ' ' | sed 's/ $//')"
    _pods=$(kubectl get pods -n "$_ns")
    echo "$_pods"
    _running='^mock-accel-(node-agent|controller)-.* 1/1 +Running '
    check "$_what: kubectl get pods -n $_ns: both Running" 2 "$(echo "$_pods" | grep -Ec "$_running")"
}

# allocation WHAT: the seed's "Testing Device Allocation" (claim, pod, exec)
allocation() {
    seed_claim test-claim >/dev/null
    seed_pod test-pod "  - name: accel
    resourceClaimName: test-claim" "      - name: accel" >/dev/null
    wait_running 180 test-pod ||
        { not_ok "$1: test-pod Running (phase '$(phase test-pod)')"; kubectl describe pod test-pod | tail -n 20; agent_logs "$ns"; return 1; }
    _env=$(kubectl exec test-pod -- env | grep MOCK_ACCEL | sort)
    echo "$_env"
    # The seed's three variables (the driver adds more: type, NUMA node...).
    check "$1: kubectl exec test-pod -- env | grep MOCK_ACCEL has the seed's three" "MOCK_ACCEL_DEVICE MOCK_ACCEL_PCI MOCK_ACCEL_UUID" \
        "$(echo "$_env" | cut -d= -f1 | grep -xE 'MOCK_ACCEL_(DEVICE|PCI|UUID)' | tr '\n' ' ' | sed 's/ $//')"
    # The agent's own write of the claim's device status (RBAC, the
    # admission policy and, since 1.36, resourceclaims/driver).
    check "$1: the agent reported the prepared device in the claim's status" "$drv" \
        "$(jp resourceclaim test-claim default '{.status.devices[0].driver}')"
}

# delete_test_pod WHAT: the seed's test pod and claim deleted
delete_test_pod() {
    kubectl delete pod test-pod --wait=false >/dev/null
    wait_gone_pod 120 test-pod || not_ok "$1: test-pod deleted"
    kubectl delete resourceclaim test-claim >/dev/null
}

# uninstalled WHAT NS HELM-NS: helm uninstall; nothing of the driver left
uninstalled() {
    _u=$(helm uninstall mock-device -n "$3" --wait --timeout 120s 2>&1)
    check_true "$1: helm uninstall ($_u)" has "$_u" "release \"mock-device\" uninstalled"
    # The kubelet wipes a driver's slices when its plugin goes (after a
    # delay); the garbage collector deletes the Leases with their owner, the
    # ServiceAccount.
    _tu=$(uptime_s)
    WAIT_INTERVAL=1 wait_until 180 nothing_left "$2"
    echo "# $1: helm uninstall to nothing left: $(since "$_tu") s"
    check "$1: nothing of the driver left after helm uninstall" "" "$(echo $(leftovers "$2"))"
    kubectl delete namespace "$2" --wait=false >/dev/null 2>&1
    WAIT_INTERVAL=1 wait_until 180 no_namespace "$2" || not_ok "$1: kubectl delete namespace $2"
}

# rbac NS WHAT: the node agent's own credentials (a token bound to its pod,
# as the kubelet mounts it) against the real authorizer and admission: its
# own writes admitted, another node's refused with the policy's message, no
# more than the chart grants.
rbac() {
    _pod=$(kubectl get pods -n "$1" -l app=$agent -o jsonpath='{.items[0].metadata.name}')
    _tok=$(kubectl create token $agent -n "$1" --bound-object-kind=Pod --bound-object-name="$_pod")
    _kc=/tmp/agent.conf
    rm -f $_kc
    kubectl config --kubeconfig=$_kc set-cluster node --server=https://127.0.0.1:6443 \
        --certificate-authority=/etc/kubernetes/pki/ca.crt >/dev/null
    kubectl config --kubeconfig=$_kc set-credentials agent --token="$_tok" >/dev/null
    kubectl config --kubeconfig=$_kc set-context agent --cluster=node --user=agent >/dev/null
    kubectl config --kubeconfig=$_kc use-context agent >/dev/null
    as_agent() { KUBECONFIG=$_kc kubectl "$@"; }
    check "$2: the agent's token names its node" "system:serviceaccount:$1:$agent $NODE_NAME" \
        "$(as_agent auth whoami -o jsonpath='{.status.userInfo.username} {.status.userInfo.extra.authentication\.kubernetes\.io/node-name[0]}')"
    check "$2: the agent's heartbeat Lease, written by the agent" "$NODE_NAME" \
        "$(jp lease $drv-$NODE_NAME "$1" '{.spec.holderIdentity}')"
    _slice() {
        cat <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata:
  name: rbac-check-$1
spec:
  driver: $drv
  nodeName: $1
  pool: {name: $1, generation: 1, resourceSliceCount: 1}
  devices: [{name: x}]
EOF
    }
    _own=$(_slice $NODE_NAME | as_agent create --dry-run=server -f - 2>&1)
    check_true "$2: a slice of its own node is admitted ($_own)" has "$_own" "created (server dry run)"
    _other=$(_slice other-node | as_agent create --dry-run=server -f - 2>&1)
    echo "$_other"
    check_true "$2: a slice of another node is denied with the policy's message" \
        has "$_other" "the node agent on node $NODE_NAME may not modify ResourceSlices of node other-node"
    _lease=$(printf 'apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: not-mine, namespace: %s}\nspec: {holderIdentity: %s}\n' "$1" "$NODE_NAME" |
        as_agent create --dry-run=server -f - 2>&1)
    echo "$_lease"
    check_true "$2: another Lease is denied with the policy's message" \
        has "$_lease" "may write only its heartbeat Lease $drv-$NODE_NAME"
    # The claim's device status, written with the agent's token (an update,
    # as the agent does): admitted; then without the chart's
    # resourceclaims/driver rule, refused by the API server itself (1.36+
    # granular status authorization): every status write of an agent
    # lacking it is 403.
    _status() { # _status TEXT: the claim's device status condition message + TEXT, replaced as the agent
        kubectl get resourceclaim test-claim -n default -o json |
            sed "s/\"message\": \"prepared on node \([^\"]*\)\"/\"message\": \"prepared on node \1 $1\"/" |
            as_agent replace --subresource=status -f - 2>&1
    }
    _w=$(_status '(checked)')
    check_true "$2: the agent's token writes its device's status in a claim ($_w)" has "$_w" "replaced"
    _rule=$(kubectl get clusterrole $agent -o jsonpath='{.rules[3].resources[0]}')
    check "$2: the ClusterRole's fourth rule is the resourceclaims/driver one" "resourceclaims/driver" "$_rule"
    kubectl patch clusterrole $agent --type=json -p '[{"op":"remove","path":"/rules/3"}]' >/dev/null
    _denied() { _w=$(_status '(checked again)'); has "$_w" 'changing status.devices requires resource="resourceclaims/driver"'; }
    WAIT_INTERVAL=0.5 wait_until 20 _denied
    echo "$_w"
    check_true "$2: without resourceclaims/driver (associated-node), the API server refuses the status write" has "$_w" \
        'changing status.devices requires resource="resourceclaims/driver"'
    kubectl patch clusterrole $agent --type=json -p "[{\"op\":\"add\",\"path\":\"/rules/3\",\"value\":{\"apiGroups\":[\"resource.k8s.io\"],\"resources\":[\"resourceclaims/driver\"],\"resourceNames\":[\"$drv\"],\"verbs\":[\"associated-node:update\",\"associated-node:patch\"]}}]" >/dev/null
    check "$2: the agent is not cluster-admin (create deployments)" no "$(as_agent auth can-i create deployments -A 2>/dev/null)"
    check "$2: the agent may not delete Nodes" no "$(as_agent auth can-i delete nodes 2>/dev/null)"
}

# --- Standard Installation (DRA driver only) with the custom registry's
# flags (the images are in no other). Pod Security enforces baseline here
# (tests/src/node.rs): the namespace Helm creates has no label allowing the
# node agent, and NOTES says what to run.
_t0=$(uptime_s)
_out=$(helm install mock-device $CHART_REF --version "$VERSION" --namespace $ns --create-namespace $REG_SETS 2>&1)
_install_s=$(since "$_t0")
echo "$_out" | head -n 12
check_true "standard: helm install" has "$_out" "STATUS: deployed"
refused() { kubectl get events -n $ns --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}' 2>/dev/null | grep -q 'violates PodSecurity'; }
WAIT_INTERVAL=1 wait_until 60 refused
_why=$(kubectl get events -n $ns --field-selector reason=FailedCreate -o jsonpath='{.items[0].message}' 2>/dev/null)
echo "$_why"
check_true "standard: where Pod Security enforces baseline, the node agent's pods are refused in a namespace --create-namespace made" \
    has "$_why" "violates PodSecurity \"baseline:latest\""
_label=$(echo "$_out" | grep -o 'kubectl label namespace [^ ]* pod-security.kubernetes.io/enforce=privileged')
check "standard: NOTES says how to label the namespace" "kubectl label namespace $ns pod-security.kubernetes.io/enforce=privileged" "$_label"
$_label >/dev/null
if installed $ns standard; then
    check "standard: the chart's ResourceQuota admits the node agent (system-node-critical pods counted)" 1 \
        "$(kubectl get resourcequota -n $ns -o jsonpath='{.items[0].status.used.pods}')"
    _pulled=$(kubectl get events -n $ns --field-selector reason=Pulled -o jsonpath='{.items[*].message}')
    echo "# standard: $_pulled"
    check_true "standard: containerd pulled the driver's image from the registry ($_pulled)" \
        has "$_pulled" "Successfully pulled image \"$REGISTRY/mock-accel-dra-driver:$VERSION\""
    allocation standard
    section "standard: install, allocation"
    # Prometheus and the dashboards against the chart's metrics.
    monitoring $ns standard
    section "standard: monitoring"
    rbac $ns standard
    delete_test_pod standard
    _test=$(helm test mock-device -n $ns --logs 2>&1)
    echo "$_test"
    check_true "standard: helm test" has "$_test" "Phase: *Succeeded"
    check_true "standard: helm test's check counted the devices" has "$_test" "$(echo $all_devices | wc -w) devices of $drv in"
fi
uninstalled standard $ns $ns

section standard

# --- Upgrade from a seed release (0.2.0 renders the Namespace without a
# keep policy; tests/chart/seed-0.2.0 stands in for it) to the seed's
# Minimal Installation: no --namespace (the release in default), the
# chart's own namespace, labelled for Pod Security, kept on uninstall (the
# seed's uninstall deletes it by hand). The namespace and what is in it
# stay. (A fresh minimal install renders the same objects: this section
# stands for it, one install and uninstall fewer on the emulated node.)
_out=$(helm install mock-device /guest/seed/mock-device-0.2.0.tgz 2>&1)
check_true "upgrade: the seed release 0.2.0 installed" has "$_out" "STATUS: deployed"
kubectl create configmap users-data -n $ns --from-literal=keep=me >/dev/null
_t0=$(uptime_s)
_out=$(helm upgrade mock-device $CHART_REF --version "$VERSION" --set kernelModule.enabled=false $REG_SETS 2>&1)
_install_s=$(since "$_t0")
check_true "upgrade: helm upgrade to $VERSION" has "$_out" "STATUS: deployed"
check_true "upgrade: the namespace is still there" kubectl get namespace $ns
check "upgrade: what was in it is still there" me "$(jp configmap users-data $ns '{.data.keep}')"
check "minimal: the chart's namespace allows the node agent" privileged \
    "$(jp namespace $ns '' '{.metadata.labels.pod-security\.kubernetes\.io/enforce}')"
# (The upgraded release's objects are the standard install's, whose
# allocation is shown above: only its rollout and publishing here.)
installed $ns upgrade
check "upgrade: the namespace is now kept on uninstall" keep \
    "$(jp namespace $ns '' '{.metadata.annotations.helm\.sh/resource-policy}')"
helm uninstall mock-device --wait --timeout 120s >/dev/null 2>&1
check_true "minimal: the namespace is kept on uninstall (helm.sh/resource-policy: keep)" kubectl get namespace $ns
WAIT_INTERVAL=1 wait_until 180 nothing_left $ns
check "upgrade: nothing of the driver left after helm uninstall" "" "$(echo $(leftovers $ns))"
check "upgrade: the namespace and the user's objects survive uninstall" me "$(jp configmap users-data $ns '{.data.keep}')"

section upgrade

# --- Critical priority limited to namespaces with a quota for it (as GKE
# does; tests/src/node.rs): without the chart's ResourceQuota the node
# agent's pods are refused.
_out=$(helm install mock-device $CHART_REF --version "$VERSION" --set resourceQuota.enabled=false $REG_SETS 2>&1)
check_true "priority quota: helm install with resourceQuota.enabled=false" has "$_out" "STATUS: deployed"
quota_refused() { kubectl get events -n $ns --field-selector reason=FailedCreate -o jsonpath='{.items[*].message}' 2>/dev/null | grep -q 'insufficient quota to match these scopes'; }
WAIT_INTERVAL=1 wait_until 60 quota_refused
check_true "priority quota: without the chart's ResourceQuota, system-node-critical pods are refused" quota_refused
helm uninstall mock-device --wait --timeout 120s >/dev/null 2>&1

section "priority quota"

# --- The seed's commands with kernelModule.enabled=true (full, verbosity,
# multi-distro) need KMM's Module API, which cannot be had here: the chart
# says so before anything is installed.
_out=$(helm install mock-device $CHART_REF --version "$VERSION" --set kernelModule.enabled=true \
    --set draDriver.controller.verbosity=10 --set draDriver.nodeAgent.verbosity=10 $REG_SETS 2>&1)
echo "$_out"
check_true "verbosity (KMM): refused, naming what is missing" \
    has "$_out" "kernelModule.enabled=true needs Kernel Module Management (KMM 2.4+) installed first"
check "verbosity (KMM): nothing installed" "" "$(helm list -A -q)"
section KMM

# --- Without KMM: the chart's module loader (kernelModule.loader), an init
# container of the node agent, on a node where mock_accel is not loaded:
# the build for this kernel from the loader's image (every kernel's build),
# with the chart's parameters; a second start does nothing; an image
# without this kernel's build, on a node without headers: a clear error in
# the pod's log and status, the controller unaffected.
LOADER_SETS="--set kernelModule.loader.enabled=true --set kernelModule.loader.image.repository=$REGISTRY/mock-accel-module"
kver=$(uname -r)
modprobe -r mock-accel
check "loader: the module unloaded first" no "$([ -d /sys/module/mock_accel ] && echo yes || echo no)"
_out=$(helm install mock-device $CHART_REF --version "$VERSION" $LOADER_SETS --set 'kernelModule.parameters={num_pfs=3}' $REG_SETS 2>&1)
check_true "loader: helm install" has "$_out" "STATUS: deployed"
loader_devices="mock0 mock1 mock2"
WAIT_INTERVAL=1 wait_until 300 has_devices "$loader_devices"
check "loader: the module loaded by the init container, the agent publishing its 3 PFs" "$loader_devices" "$(devices)"
check "loader: with the chart's parameters" 3 "$(cat /sys/module/mock_accel/parameters/num_pfs 2>/dev/null)"
_log=$(kubectl logs -n $ns -l app=$agent -c load-module 2>&1)
echo "# loader: $_log"
check_true "loader: its log says what it did" has "$_log" "loaded the build for $kver shipped in this image"
_old=$(kubectl get pods -n $ns -l app=$agent -o name)
kubectl delete -n $ns "$_old" --wait=true >/dev/null 2>&1
# (the old pod gone: the pods now are the new one)
new_agent_ready() { [ "$(kubectl get pods -n $ns -l app=$agent -o jsonpath='{.items[*].status.containerStatuses[0].ready}')" = true ]; }
WAIT_INTERVAL=1 wait_until 180 new_agent_ready
_log=$(kubectl logs -n $ns -l app=$agent -c load-module 2>&1)
echo "# loader, again: $_log"
check_true "loader: a second start does nothing, saying so" has "$_log" "mock_accel is loaded already on $kver; nothing to do"
helm uninstall mock-device --wait --timeout 120s >/dev/null 2>&1

modprobe -r mock-accel
_other=$(ls /guest/driver-images | sed -n 's/^mock-accel-module-\(v.*-.*\)\.tar$/\1/p' | grep -v -- "-$kver\$" | head -1)
check_true "loader: an image for another kernel ($_other)" test -n "$_other"
_out=$(helm install mock-device $CHART_REF --version "$VERSION" $LOADER_SETS --set kernelModule.loader.image.tag=$_other $REG_SETS 2>&1)
check_true "loader: helm install with it" has "$_out" "STATUS: deployed"
loader_message() {
    kubectl get pods -n $ns -l app=$agent \
        -o jsonpath='{.items[0].status.initContainerStatuses[0].state.terminated.message}{.items[0].status.initContainerStatuses[0].lastState.terminated.message}' 2>/dev/null
}
has_loader_message() { [ -n "$(loader_message)" ]; }
WAIT_INTERVAL=1 wait_until 180 has_loader_message
_msg=$(loader_message)
echo "# loader, refused: $_msg"
check_true "loader: the pod's status says there is no build for this kernel" has "$_msg" "this image has no build for the running kernel $kver"
check_true "loader: and no headers to build one" has "$_msg" "no kernel headers at /lib/modules/$kver/build"
check_true "loader: kubectl get pods shows the init container failing" \
    has "$(kubectl get pods -n $ns -l app=$agent --no-headers 2>&1)" "Init:"
check "loader: nothing loaded" no "$([ -d /sys/module/mock_accel ] && echo yes || echo no)"
WAIT_INTERVAL=1 wait_until 120 kubectl rollout status deployment/mock-accel-controller -n $ns --timeout=5s >/dev/null 2>&1
check_true "loader: the controller is unaffected (rolled out)" kubectl rollout status deployment/mock-accel-controller -n $ns --timeout=5s
helm uninstall mock-device --wait --timeout 120s >/dev/null 2>&1
check "loader: nothing of the driver left" "" "$(echo $(leftovers $ns))"
section loader

finish
