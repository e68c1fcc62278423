# The demo: a real kernel with mock-accel, the node agent and a Kubernetes
# API server. Devices are hot-plugged and unplugged; after each step you see
# the kernel's uevents, the ResourceSlices the cluster now holds, and how
# long the change took to reach them.
. /guest/lib.sh
api=http://127.0.0.1:6443
node=mock-guest

step() { printf '\n== %s\n' "$*"; }
run() { echo "\$ $*"; sh -c "$*" || echo "   (failed with status $?)"; }
seen=0
events() {
    total=$(wc -l </tmp/events)
    tail -n +$((seen + 1)) /tmp/events | awk '{
        n = split($2, p, "/"); what = p[n]; extra = ""
        for (i = 3; i <= NF; i++)
            if ($i ~ /^MOCK_ACCEL_(EVENT|NUMVFS|STATUS|HEALTH)=/) { sub(/^MOCK_ACCEL_/, "", $i); extra = extra " " tolower($i) }
        if (what ~ /^mock/ || $2 ~ /^\/module\//) printf "  uevent  %-7s %-12s%s\n", $1, what, extra
    }'
    seen=$total
}
# change DESC COUNT FILE VALUE: make a change, measure until the API shows it
change() {
    step "$1"
    echo "\$ echo \"$4\" > $3"
    ms=$(guest-tool wait-devices --api $api --node $node --count "$2" --write "$3" "$4" 2>&1) || { echo "FAILED: $ms"; return; }
    events
    echo "  -> the API server holds the change $ms ms after the write"
    guest-tool slices --api $api --node $node
}

step "Start a Kubernetes API server (the project's test server) and register node $node"
mock-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kc >/tmp/apiserver.log 2>&1 &
until guest-tool http GET $api/version >/dev/null 2>&1; do sleep 0.05; done
guest-tool http POST $api/api/v1/nodes "{\"metadata\":{\"name\":\"$node\"}}" >/dev/null && echo "  node/$node created"

uevents_start /tmp/events
step "Load the module: 4 PFs on 2 NUMA nodes, 8 VFs each allowed"
run modprobe mock-accel
events

step "Start the node agent (uevent-driven; the periodic rescan is off to prove it)"
echo "\$ mock-accel-agent --rescan-interval=0 --heartbeat-interval=1s (NODE_NAME=$node)"
KUBECONFIG=/tmp/kc NODE_NAME=$node mock-accel-agent --rescan-interval=0 --heartbeat-interval=1s --namespace=default \
    --admin-address=127.0.0.1:8080 --v=2 >/tmp/agent.log 2>&1 &
agent_pid=$!
ms=$(guest-tool wait-devices --api $api --node $node --count 4)
echo "  -> first publish $ms ms after start"
guest-tool slices --api $api --node $node

step "Start the controller: the cluster-wide view (fleet metrics) and the clean-up"
echo "\$ mock-accel-agent --mode=controller --agent-grace-period=3s"
KUBECONFIG=/tmp/kc mock-accel-agent --mode=controller --namespace=default --agent-grace-period=3s --rescan-interval=5s \
    --admin-address=127.0.0.1:8081 --v=2 >/tmp/controller.log 2>&1 &
fleet() { guest-tool http GET http://127.0.0.1:8081/metrics 2>/dev/null | grep -E "$1" | sed 's/^/  /'; }
agent_seen() { fleet '^mock_accel_fleet_agent_up' | grep -q ' 1$'; }
wait_until 60 agent_seen || echo "FAILED: the controller never saw the agent"
fleet '^mock_accel_(controller_leader|fleet_(devices|agent_up|node_slices))[{ ]'

change "Hot-plug PF 4 on NUMA node 1" 5 /sys/bus/mock-accel/new_device "4 1"
change "Enable 4 SR-IOV VFs on mock1" 9 /sys/class/mock-accel/mock1/sriov_numvfs 4
change "Disable them" 5 /sys/class/mock-accel/mock1/sriov_numvfs 0
change "Hot-unplug PF 4" 4 /sys/bus/mock-accel/del_device 4

step "A kubelet restart deletes the node's slices; the agent puts them back"
echo "\$ kubelet start-up (DELETE every ResourceSlice of $node)"
guest-tool http POST "$api/_mock/kubelet-restart?node=$node" | tail -1 | sed 's/^/  /'
ms=$(guest-tool wait-devices --api $api --node $node --count 4)
echo "  -> restored in $ms ms"

if command -v kubectl >/dev/null; then
    step "The seed README's verification, with the real kubectl"
    export KUBECONFIG=/tmp/kc
    run kubectl get resourceslices -l driver=mock-accel.example.com
    run "kubectl get resourceslice $node-mock-accel.example.com-0 -o yaml | sed -n '/^spec:/,/name: mock0\$/p'"
    run kubectl get nodes
fi

if command -v kubectl >/dev/null; then
    step "A pod's claim: the scheduler allocates mock1, the kubelet asks the agent to prepare it"
    drv=mock-accel.example.com
    echo '{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","metadata":{"name":"test-claim","namespace":"default"},"spec":{"devices":{"requests":[{"name":"accel","exactly":{"deviceClassName":"mock-accel-pf","count":1}}]}}}' >/tmp/claim.json
    run kubectl create -f /tmp/claim.json
    run "kubectl patch resourceclaim test-claim --subresource=status --type=merge -p '{\"status\":{\"allocation\":{\"devices\":{\"results\":[{\"request\":\"accel\",\"driver\":\"$drv\",\"pool\":\"$node\",\"device\":\"mock1\"}]}}}}' >/dev/null && echo allocated"
    uid=$(kubectl get resourceclaim test-claim -o jsonpath='{.metadata.uid}')
    echo "\$ kubelet -> NodePrepareResources(default/test-claim/$uid)"
    guest-tool kubelet register | sed 's/^/  /'
    guest-tool kubelet prepare "default/test-claim/$uid" | sed 's/^/  /'
    echo "  mock1 status in sysfs: $(cat /sys/class/mock-accel/mock1/status)"
    prepared_seen() { fleet '^mock_accel_fleet_claims.*state="prepared"' | grep -q ' 1$'; }
    wait_until 60 prepared_seen
    echo "  the controller's view (the claim's status.devices says prepared):"
    fleet '^mock_accel_fleet_(claims\{.*state="prepared"|devices\{.*type="pf",numa_node="1")'
    echo "  what the container gets (CDI spec /var/run/cdi/k8s.$drv-accel_$uid.json):"
    grep -oE '"(MOCK_ACCEL_(UUID|PCI|DEVICE)=[^"]*|path": "[^"]*)' /var/run/cdi/k8s.$drv-accel_$uid.json | tr -d '"' | sed 's/^/    /'
    echo "\$ kubelet -> NodeUnprepareResources (the pod is gone)"
    guest-tool kubelet unprepare "default/test-claim/$uid" | sed 's/^/  /'
    echo "  mock1 status in sysfs: $(cat /sys/class/mock-accel/mock1/status); CDI specs left: $(ls /var/run/cdi | wc -l)"
fi

step "The agent's own measure (kernel event received -> slices accepted)"
guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
grep -E '^mock_accel_(event_to_slice_seconds_(sum|count)|slice_writes_total|uevents_total|prepares_total|unprepares_total)' /tmp/metrics | sed 's/^/  /'
step "The node agent dies (SIGKILL): its heartbeat stops; after the grace period the controller deletes the node's slices and says why"
echo "\$ kill -9 <agent>"
kill -9 $agent_pid
ms=$(guest-tool wait-devices --api $api --node $node --count 0 --timeout 120) || echo "FAILED: $ms"
echo "  -> the node's slices deleted $ms ms after the agent died (its heartbeat holds 4 s from the last renewal, then 3 s of grace)"
if command -v kubectl >/dev/null; then
    run "kubectl get events -n default --field-selector reason=AgentGone -o custom-columns=TYPE:.type,REASON:.reason,OBJECT:.involvedObject.kind,NAME:.involvedObject.name"
fi
fleet '^mock_accel_(fleet_agent_up|controller_cleanups_total\{reason="AgentGone")'
uevents_stop
