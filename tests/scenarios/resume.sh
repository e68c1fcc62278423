# A copy of the saved node just resumed (tests/src/snapshot.rs): what the
# save and the time since did to it. The guest's init set its wall clock to
# the host's (a step forward of however long the saved state waited); its
# monotonic clock went on from where it was saved, which is what the
# components' timers and leases run on. Shown here: the clock is the
# host's, the kubelet's lease is renewed after the resume and the Node
# stays Ready without the node lifecycle controller's taints, the
# certificates and the controller-manager's service-account credentials
# made before the save are accepted after it, a pod starts, and the API
# server reaches the kubelet (exec, logs) with its client certificate.
. /guest/lib.sh
. /guest/node.sh
start=$(date +%s)
echo "# guest clock at the start: $start"

node_up || { finish; exit 1; }

# The Node lease: renewed after the resume (every 10 s by the kubelet).
lease_time() {
    _r=$(kubectl get lease "$NODE_NAME" -n kube-node-lease -o jsonpath='{.spec.renewTime}' 2>/dev/null)
    date -d "$(echo "$_r" | sed 's/T/ /; s/\..*//; s/Z$//')" +%s 2>/dev/null || echo 0
}
renewed() { [ "$(lease_time)" -ge "$start" ]; }
WAIT_INTERVAL=1 wait_until 60 renewed
check_true "the kubelet renewed its lease after the resume ($(lease_time) >= $start)" renewed

# Ready since before the save: no transition, no taint, for 20 s after
# the resume (the controller checks every 5 s).
ready_since() {
    _t=$(jp node "$NODE_NAME" "" '{.status.conditions[?(@.type=="Ready")].lastTransitionTime}')
    date -d "$(echo "$_t" | sed 's/T/ /; s/Z$//')" +%s 2>/dev/null || echo 0
}
steady=yes
while [ $(($(date +%s) - start)) -lt 20 ]; do
    node_ready || steady="not Ready at $(date +%s)"
    _taints=$(jp node "$NODE_NAME" "" '{.spec.taints[*].key}')
    [ -z "$_taints" ] || steady="tainted $_taints at $(date +%s)"
    sleep 2
done
check "the Node stayed Ready and untainted for 20 s after the resume" yes "$steady"
check_true "its Ready condition last changed before the resume ($(ready_since) < $start)" \
    test "$(ready_since)" -lt "$start"

# The controller-manager's service-account credentials (made before the
# save) still work: a Deployment's ReplicaSet and pod appear; the pod runs.
kubectl create deployment resumed --image="$BUSYBOX_IMAGE" -- sh -c 'echo resumed-pod-says-hello; sleep 3600' >/dev/null
pod() { kubectl get pods -l app=resumed -o jsonpath='{.items[0].metadata.name}' 2>/dev/null; }
WAIT_INTERVAL=1 wait_until 120 sh -c '[ -n "$(kubectl get pods -l app=resumed -o name 2>/dev/null)" ]'
check_true "the Deployment's pod created by the controller-manager" test -n "$(pod)"
wait_running 180 "$(pod)"
check "the pod Running" Running "$(phase "$(pod)")"
check "kubectl exec (the API server to the kubelet, both with certificates from before the save)" \
    resumed "$(kubectl exec "$(pod)" -- echo resumed 2>&1)"
check "kubectl logs" resumed-pod-says-hello "$(kubectl logs "$(pod)" 2>&1)"

# A token the API server issues now, checked against its clock now.
token=$(kubectl create token default --duration=10m 2>&1)
check "a new service-account token is accepted" system:serviceaccount:default:default \
    "$(kubectl --kubeconfig=/dev/null --server=https://127.0.0.1:6443 --certificate-authority=/etc/kubernetes/pki/ca.crt \
        --token="$token" auth whoami -o jsonpath='{.status.userInfo.username}' 2>&1)"
kubectl delete deployment resumed --wait=false >/dev/null
finish
