# The demo (./dev vm-demo): a real Kubernetes v1.37.2 node in this guest
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd 2.4, the kubelet), the mock-accel module and the node agent.
# The seed README's test pod gets a device; a second pod waits for one
# until a PF is hot-plugged, and the real scheduler places it.
. /guest/lib.sh
. /guest/node.sh
drv=mock-accel.example.com

step() { printf '\n== %s\n' "$*"; }
run() { echo "\$ $*"; sh -c "$*" 2>&1 | sed 's/^/  /'; }
fail() { echo "FAILED: $*"; node_logs | tail -n 60; exit 1; }
phase() { kubectl get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }
running() { [ "$(phase "$1")" = Running ]; }
devices() { kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[*].name}' 2>/dev/null; }
has_devices() { [ "$(devices)" = "$1" ]; }

step "Start the node: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet"
node_up || fail "the node did not come up"
run kubectl get nodes -o wide

step "Load the module with one PF; apply the chart's DeviceClasses; start the node agent"
run modprobe mock-accel num_pfs=1
run "ls /sys/class/mock-accel"
run kubectl apply -f /guest/deviceclasses.json
NODE_NAME=$NODE_NAME POD_NAMESPACE=kube-system start agent mock-accel-agent --admin-address=127.0.0.1:8080
WAIT_INTERVAL=0.5 wait_until 120 has_devices mock0 || fail "no slice for mock0"
run "kubectl get resourceslices -l driver=$drv"

step "The seed's test: a ResourceClaim for one PF, and a pod using it"
claim() { seed_claim "$1"; }
pod() { # pod NAME CLAIM: the seed's test pod with that claim
    seed_pod "$1" "  - name: accel
    resourceClaimName: $2" "      - name: accel"
}
claim test-claim | sed 's/^/  /'
pod test-pod test-claim | sed 's/^/  /'
WAIT_INTERVAL=1 wait_until 300 running test-pod || fail "test-pod is $(phase test-pod)"
run kubectl get pod test-pod -o wide
run "kubectl exec test-pod -- env | grep MOCK_ACCEL"
run "echo mock0 status in sysfs: \$(cat /sys/class/mock-accel/mock0/status)"

step "A second pod wants a PF too: none is free, the real scheduler keeps it waiting"
claim waiting-claim | sed 's/^/  /'
pod waiting-pod waiting-claim | sed 's/^/  /'
unschedulable() { kubectl get events --field-selector involvedObject.name=waiting-pod,reason=FailedScheduling -o name 2>/dev/null | grep -q .; }
WAIT_INTERVAL=1 wait_until 120 unschedulable || fail "waiting-pod was never found unschedulable"
run kubectl get pod waiting-pod
run "kubectl get events --field-selector involvedObject.name=waiting-pod,reason=FailedScheduling -o custom-columns=REASON:.reason,MESSAGE:.message | cut -c1-150"

step "Hot-plug a PF: the agent publishes it, the scheduler places the waiting pod"
t0=$(uptime_s)
run "echo 1 > /sys/bus/mock-accel/new_device"
WAIT_INTERVAL=0.5 wait_until 120 has_devices "mock0 mock1" && echo "  -> mock1 in the ResourceSlice after $(since "$t0") s"
WAIT_INTERVAL=0.5 wait_until 300 running waiting-pod || fail "waiting-pod is $(phase waiting-pod)"
echo "  -> waiting-pod Running $(since "$t0") s after the hot-plug"
run kubectl get pods -o wide
run "kubectl exec waiting-pod -- env | grep MOCK_ACCEL"

step "Delete the pods: the devices are unprepared"
run kubectl delete pod test-pod waiting-pod
both_free() { [ "$(cat /sys/class/mock-accel/mock0/status /sys/class/mock-accel/mock1/status | tr -d '\n')" = 00 ]; }
WAIT_INTERVAL=0.5 wait_until 60 both_free || fail "the devices stayed allocated"
run "echo status in sysfs: mock0 \$(cat /sys/class/mock-accel/mock0/status), mock1 \$(cat /sys/class/mock-accel/mock1/status), CDI specs left: \$(ls /var/run/cdi | wc -l)"
stop agent
echo
echo "demo finished"
