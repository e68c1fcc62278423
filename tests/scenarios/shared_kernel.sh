# Many nodes on one kernel (issue 35): two node agents (node-a, node-b) on
# the guest's one kernel with the real module, each with --shared-kernel,
# and the controller, against the test API server. Each takes two of the
# four PFs at start; each pool holds only its node's devices; a hot-plug
# with an owner, VFs and a fault reach that node's pool only; an agent
# killed leaves the other unaffected; its Node deleted, the controller
# gives its PFs back once its heartbeat is gone, and a new node takes them.
. /guest/lib.sh
api=http://127.0.0.1:6443

mock-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kc >/tmp/apiserver.log 2>&1 &
wait_until 60 guest-tool http GET $api/version >/dev/null 2>&1
check_true "the test API server answers" guest-tool http GET $api/version
for n in node-a node-b node-c; do
    guest-tool http POST $api/api/v1/nodes "{\"metadata\":{\"name\":\"$n\"}}" >/dev/null
done
check_true "modprobe num_pfs=4" modprobe mock-accel num_pfs=4

# agent NODE PORT FLAGS...: a node agent publishing NODE's devices
agent() {
    _n=$1 _p=$2
    shift 2
    mkdir -p /tmp/plugins/$_n
    KUBECONFIG=/tmp/kc NODE_NAME=$_n mock-accel-agent --rescan-interval=0 --kubelet-plugin=false \
        --plugin-socket=/tmp/plugins/$_n --admin-address=127.0.0.1:$_p --heartbeat-interval=1s \
        --shared-kernel "$@" --v=2 >/tmp/agent-$_n.log 2>&1 &
}
# devices NODE: how many devices NODE's pool holds now
slices() { guest-tool http GET "$api/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3D$1"; }
devices() { slices "$1" | grep -o '"name":"mock[0-9][-vf0-9]*"' | sort -u | wc -l; }
# wait_dev DESC NODE COUNT [FILE VALUE]
wait_dev() {
    _d=$1 _n=$2 _c=$3
    shift 3
    if [ $# -gt 0 ]; then
        ms=$(guest-tool wait-devices --api $api --node "$_n" --count "$_c" --write "$1" "$2" 2>&1)
    else
        ms=$(guest-tool wait-devices --api $api --node "$_n" --count "$_c" 2>&1)
    fi
    if [ $? -eq 0 ]; then ok "$_d (${ms} ms)"; else not_ok "$_d: $ms"; fi
}
owners() { for pf in 0 1 2 3 4 5 6; do [ -e $cls/mock$pf ] && printf '%s ' "$(cat $cls/mock$pf/owner)"; done; }
owned_by() { for pf in 0 1 2 3 4 5 6; do [ "$(cat $cls/mock$pf/owner 2>/dev/null)" = "$1" ] && printf 'mock%s ' $pf; done; }

check_false "--take-pfs without --shared-kernel is refused" sh -c \
    "KUBECONFIG=/tmp/kc NODE_NAME=x mock-accel-agent --take-pfs=2 --kubelet-plugin=false --plugin-socket=/tmp/x --admin-address=127.0.0.1:8099 >/tmp/refused.log 2>&1"
check "saying why" 1 "$(grep -c 'need --shared-kernel' /tmp/refused.log)"

# Both agents at once, racing for the four unowned PFs.
agent node-a 8081 --take-pfs=2
agent_a=$!
agent node-b 8082 --take-pfs=2
agent_b=$!
wait_dev "node-a publishes 2 PFs" node-a 2
wait_dev "node-b publishes 2 PFs" node-b 2
check "the kernel: two PFs each, none left" "2 2 0" \
    "$(owners | tr ' ' '\n' | grep -c '^node-a$') $(owners | tr ' ' '\n' | grep -c '^node-b$') $(owners | tr ' ' '\n' | grep -c '^$')"
a_pfs=$(owned_by node-a)
b_pfs=$(owned_by node-b)
echo "# node-a: $a_pfs; node-b: $b_pfs"
uuids=$( (slices node-a; slices node-b) | grep -o '"string":"[0-9a-f-]\{36\}"' | sort)
check "four distinct UUIDs across the two pools" "4 4" "$(echo "$uuids" | wc -l) $(echo "$uuids" | uniq | wc -l)"
in_pool() { slices "$1" | grep -o "\"name\":\"$2\"" | sort -u | wc -l; }
a0=$(echo $a_pfs | cut -d' ' -f1)
b0=$(echo $b_pfs | cut -d' ' -f1)
check "node-a's pool has its PF and not node-b's" "1 0" "$(in_pool node-a $a0) $(in_pool node-a $b0)"

# A hot-plug with an owner: that node only.
wait_dev "PF 5 plugged for node-b: node-b's pool" node-b 3 $bus/new_device "5 1 node-b"
check "node-a's pool unchanged" 2 "$(devices node-a)"
# VFs on node-a's PF: node-a only (they follow their PF's owner).
wait_dev "2 VFs on node-a's $a0" node-a 4 $cls/$a0/sriov_numvfs 2
check "node-b's pool unchanged" 3 "$(devices node-b)"
# A fault on node-b's PF: the taint in node-b's pool only.
echo failed > $cls/$b0/health
tainted() { slices "$1" | grep -q taints; }
WAIT_INTERVAL=0.5 wait_until 60 tainted node-b
check "node-b's pool has the taint" 1 "$(slices node-b | grep -c taints)"
check "node-a's pool has none" 0 "$(slices node-a | grep -c taints)"

# node-b's agent killed: node-a goes on (a hot-plug for it still arrives).
kill $agent_b
wait $agent_b 2>/dev/null
wait_dev "node-b's agent gone, node-a still follows its devices" node-a 5 $bus/new_device "6 0 node-a"
check "node-b's PFs stay node-b's while its Node exists" "${b_pfs}mock5 " "$(owned_by node-b)"

# The controller on the shared kernel: node-b's Node deleted, its agent's
# heartbeat gone past a 1 s grace: its PFs given back (freed first).
echo 1 > $cls/mock5/status
KUBECONFIG=/tmp/kc POD_NAME=controller mock-accel-agent --mode=controller --shared-kernel \
    --agent-grace-period=1s --admin-address=127.0.0.1:8090 --v=2 >/tmp/controller.log 2>&1 &
controller=$!
sleep 3
check "the controller leaves a node's PFs while its Node exists" "${b_pfs}mock5 " "$(owned_by node-b)"
guest-tool http DELETE $api/api/v1/nodes/node-b >/dev/null
owns_none() { [ -z "$(owned_by "$1")" ]; }
WAIT_INTERVAL=0.5 wait_until 90 owns_none node-b
check "node-b's Node gone and its agent too: its PFs given back" "" "$(owned_by node-b)"
check "and freed" 0 "$(cat $cls/mock5/status)"
check "node-a's untouched" "${a_pfs}mock6 " "$(owned_by node-a)"
check "the controller said so" 1 "$(grep -c 'gave back the PFs of a gone node' /tmp/controller.log)"
check "and its metric counts them" 3 "$(guest-tool http GET http://127.0.0.1:8090/metrics | grep '^mock_accel_owner_released_total' | awk '{print $2}')"

# A PF given to a running node by hand: its agent hears the owner change.
wait_dev "mock5 given to node-a (echo node-a > owner): node-a's pool" node-a 6 $cls/mock5/owner node-a
# A new node takes what is left.
echo ok > $cls/$b0/health
agent node-c 8083 --take-pfs=3
agent_c=$!
wait_dev "node-c takes the two free PFs" node-c 2
check "the kernel agrees" "$b_pfs" "$(owned_by node-c)"
check "node-c's agent says it wanted more" 1 "$(grep -c 'fewer unowned PFs than asked for' /tmp/agent-node-c.log)"
check "node-a still has its own" 6 "$(devices node-a)"

# (The test API server has no DeviceScenario API: said once, not at every retry.)
check "node-a's agent said once that scenarios wait for their API" 1 "$(grep -c 'cannot watch; scenarios wait for it' /tmp/agent-node-a.log)"
check "and never that it was watching again" 0 "$(grep -c 'watching again' /tmp/agent-node-a.log)"

kill $agent_a $agent_c $controller
wait $agent_a $agent_c $controller 2>/dev/null
check_true "modprobe -r" modprobe -r mock-accel
finish
