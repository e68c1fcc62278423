# The demo (./dev vm-demo): a real Kubernetes v1.37.2 node in this guest
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kube-proxy, containerd 2.4, the kubelet), the mock-accel module, and the
# driver installed with Helm from an OCI registry in the guest, as the seed
# README says.
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

step "The node: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet (started once, saved, resumed here)"
node_up || fail "the node did not come up"
run kubectl get nodes -o wide

step "Load the module with one PF"
run modprobe mock-accel num_pfs=1
run "ls /sys/class/mock-accel"

step "An OCI registry at $REGISTRY: the chart (helm push) and the driver's image (ctr push), pushed when the node was set up"
registry_up >/dev/null || fail "the registry"
run "helm show chart oci://$REGISTRY/charts/mock-device --version $VERSION | grep -E '^(name|version|appVersion):'"

step "Install the driver as the seed README says (its custom-registry command, this registry's host)"
kubectl create namespace mock-device >/dev/null
# Pod Security enforces baseline on this node: the privileged node agent needs this (NOTES says so).
run kubectl label namespace mock-device pod-security.kubernetes.io/enforce=privileged
t0=$(uptime_s)
run "helm install mock-device oci://$REGISTRY/charts/mock-device --version $VERSION --namespace mock-device \\
  --set draDriver.controller.image.repository=$REGISTRY/mock-accel-dra-driver \\
  --set draDriver.nodeAgent.image.repository=$REGISTRY/mock-accel-dra-driver | head -n 6"
WAIT_INTERVAL=0.5 wait_until 300 has_devices mock0 || fail "no slice for mock0"
echo "  -> helm install to the first ResourceSlice: $(since "$t0") s"
run "kubectl get events -n mock-device --field-selector reason=Pulled -o custom-columns=PULLED:.message | cut -c1-150"
run kubectl get daemonset,deployment -n mock-device
run kubectl get pods -n mock-device -o wide
run "kubectl get resourceslices -l driver=$drv"
run "kubectl get deviceclass | grep mock-accel"

step "The seed's test: a ResourceClaim for one PF, and a pod using it"
claim() { seed_claim "$1"; }
pod() { # pod NAME CLAIM: the seed's test pod with that claim
    seed_pod "$1" "  - name: accel
    resourceClaimName: $2" "      - name: accel"
}
claim test-claim | sed 's/^/  /'
pod test-pod test-claim | sed 's/^/  /'
wait_running 300 test-pod || fail "test-pod is $(phase test-pod)"
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
wait_running 300 waiting-pod || fail "waiting-pod is $(phase waiting-pod)"
echo "  -> waiting-pod Running $(since "$t0") s after the hot-plug"
run kubectl get pods -o wide
run "kubectl exec waiting-pod -- env | grep MOCK_ACCEL"

step "Delete the pods: the devices are unprepared"
run kubectl delete pod test-pod waiting-pod
both_free() { [ "$(cat /sys/class/mock-accel/mock0/status /sys/class/mock-accel/mock1/status | tr -d '\n')" = 00 ]; }
WAIT_INTERVAL=0.5 wait_until 60 both_free || fail "the devices stayed allocated"
run "echo status in sysfs: mock0 \$(cat /sys/class/mock-accel/mock0/status), mock1 \$(cat /sys/class/mock-accel/mock1/status), CDI specs left: \$(ls /var/run/cdi | wc -l)"
step "Uninstall: the driver's pods, slices and everything the chart made go"
run helm uninstall mock-device -n mock-device --wait
no_slices() { [ -z "$(devices)" ]; }
WAIT_INTERVAL=1 wait_until 120 no_slices || fail "slices left after helm uninstall"
run "kubectl get resourceslices -l driver=$drv"
echo
echo "demo finished"
