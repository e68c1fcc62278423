# The kubelet plugin in the guest with the real module: guest-tool plays the
# kubelet over the agent's sockets; kubectl plays the user and the
# scheduler (creates and allocates the claims in the test API server).
. /guest/lib.sh
api=http://127.0.0.1:6443
node=mock-guest
drv=mock-accel.example.com
cdi=/var/run/cdi

mock-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kc >/tmp/apiserver.log 2>&1 &
until guest-tool http GET $api/version >/dev/null 2>&1; do sleep 0.05; done
guest-tool http POST $api/api/v1/nodes "{\"metadata\":{\"name\":\"$node\"}}" >/dev/null
export KUBECONFIG=/tmp/kc
check_true "modprobe mock-accel" modprobe mock-accel
echo 2 >$cls/mock1/sriov_numvfs

KUBECONFIG=/tmp/kc NODE_NAME=$node mock-accel-agent --rescan-interval=0 --admin-address=127.0.0.1:8080 --v=2 >/tmp/agent.log 2>&1 &
agent=$!
guest-tool wait-devices --api $api --node $node --count 6 >/dev/null || not_ok "the agent never published"
wait_until 60 test -S /var/lib/kubelet/plugins_registry/$drv-reg.sock
check_true "registration socket in the kubelet's registry" test -S /var/lib/kubelet/plugins_registry/$drv-reg.sock
check "GetInfo" "registered $drv /var/lib/kubelet/plugins/$drv/dra.sock v1.DRAPlugin,v1beta1.DRAPlugin,v1.DRAResourceHealth,v1alpha1.DRAResourceHealth" \
    "$(guest-tool kubelet register)"

# claim NAME DEVICE...: create a claim with one request per device and
# allocate it to this node's pool; prints NS/NAME/UID for the kubelet.
claim() {
    _name=$1; shift
    _reqs=""; _res=""; _i=0
    for _d in "$@"; do
        _reqs="$_reqs{\"name\":\"r$_i\",\"exactly\":{\"deviceClassName\":\"mock-accel-pf\"}},"
        _res="$_res{\"request\":\"r$_i\",\"driver\":\"$drv\",\"pool\":\"$node\",\"device\":\"$_d\"},"
        _i=$((_i + 1))
    done
    echo "{\"apiVersion\":\"resource.k8s.io/v1\",\"kind\":\"ResourceClaim\",\"metadata\":{\"name\":\"$_name\",\"namespace\":\"default\"},\"spec\":{\"devices\":{\"requests\":[${_reqs%,}]}}}" >/tmp/claim.json
    kubectl create -f /tmp/claim.json >/dev/null || { not_ok "kubectl create claim $_name"; return; }
    kubectl patch resourceclaim "$_name" -n default --subresource=status --type=merge \
        -p "{\"status\":{\"allocation\":{\"devices\":{\"results\":[${_res%,}]}}}}" >/dev/null || not_ok "allocate $_name"
    echo "default/$_name/$(kubectl get resourceclaim "$_name" -n default -o jsonpath='{.metadata.uid}')"
}
status() { cat $cls/$1/status; }

# Prepare a PF: status flips to 1, the CDI spec names the real device node.
c1=$(claim c1 mock0)
uid1=${c1##*/}
out=$(guest-tool kubelet prepare "$c1")
check "prepare c1 (v1)" "$uid1 ok mock0=k8s.$drv/accel=$uid1-mock0" "$out"
check "mock0 allocated in sysfs" 1 "$(status mock0)"
spec=$cdi/k8s.$drv-accel_$uid1.json
check_true "CDI spec written" test -f $spec
check_true "CDI spec names /dev/mock-accel/mock0" grep -q '"path": "/dev/mock-accel/mock0"' $spec
majmin=$(cat $cls/mock0/dev)
check_true "with its real major ($majmin)" grep -q "\"major\": ${majmin%:*}," $spec
check_true "and minor" grep -q "\"minor\": ${majmin#*:}," $spec
check_true "the node exists with that number" sh -c "ls -l /dev/mock-accel/mock0 | grep -q '${majmin%:*}, *${majmin#*:}'"
check_true "MOCK_ACCEL_UUID is the device's" grep -q "MOCK_ACCEL_UUID=$(cat $cls/mock0/uuid)" $spec
check_true "MOCK_ACCEL_PCI" grep -q "MOCK_ACCEL_PCI=0000:1a:00.0" $spec
check_true "MOCK_ACCEL_DEVICE" grep -q "MOCK_ACCEL_DEVICE=mock0" $spec
check "prepare again: same answer" "$out" "$(guest-tool kubelet prepare "$c1")"

# Unprepare in v1beta1: status back to 0, the spec removed.
check "unprepare c1 (v1beta1)" "$uid1 ok" "$(guest-tool kubelet --api v1beta1 unprepare "$c1")"
check "mock0 free again" 0 "$(status mock0)"
check_false "CDI spec removed" test -e $spec
check "unprepare again" "$uid1 ok" "$(guest-tool kubelet unprepare "$c1")"

# A VF while its PF is free, then the PF: refused, and it says which.
c2=$(claim c2 mock1-vf0)
check_true "prepare VF mock1-vf0" guest-tool kubelet prepare "$c2"
check "VF allocated" 1 "$(status mock1_vf0)"
c3=$(claim c3 mock1)
check_true "its PF is refused" sh -c "guest-tool kubelet prepare '$c3' | grep -q 'PF mock1 cannot be prepared: its VF mock1-vf0 is prepared for claim default/c2'"
check "the kernel too refuses to disable SR-IOV under it" EBUSY "$(guest-tool write $cls/mock1/sriov_numvfs 0)"

# A failed device: the module refuses the allocation (EIO), the claim says why.
echo failed >$cls/mock2/health
c4=$(claim c4 mock2)
check_true "a failed device is refused" sh -c "guest-tool kubelet prepare '$c4' | grep -q 'device mock2 is failed'"
check "and stays free" 0 "$(status mock2)"
echo ok >$cls/mock2/health

# Health: stream open, then the module goes away under a prepared claim.
c5=$(claim c5 mock3)
uid5=${c5##*/}
check_true "prepare mock3" guest-tool kubelet prepare "$c5"
rm -f /tmp/health.ready
guest-tool kubelet health --count 40 --ready /tmp/health.ready >/tmp/health 2>&1 &
hp=$!
wait_until 60 test -e /tmp/health.ready
check_true "health stream: mock3 healthy" wait_until 60 grep -q '^mock3 HEALTHY' /tmp/health
guest-tool kubelet unprepare "$c2" >/dev/null
check_true "rmmod while mock3 is prepared" modprobe -r mock-accel
check_true "health stream: mock3 unhealthy (removed)" wait_until 60 grep -q '^mock3 UNHEALTHY removed' /tmp/health
check "unprepare still succeeds" "$uid5 ok" "$(guest-tool kubelet unprepare "$c5")"
check_false "and the CDI spec is gone" test -e $cdi/k8s.$drv-accel_$uid5.json
kill $hp 2>/dev/null

guest-tool http GET http://127.0.0.1:8080/livez >/tmp/livez
check "the agent is alive" 200 "$(head -1 /tmp/livez)"
guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
check_true "prepare metrics" grep -q 'mock_accel_prepares_total{result="error",reason="unhealthy"} 1' /tmp/metrics
grep -E '^mock_accel_(prepares_total|unprepares_total|prepared_devices|plugin_registered)' /tmp/metrics | sed 's/^/METRIC /'
kill $agent
wait_until 30 gone $agent
check_false "SIGTERM stops the agent" kill -0 $agent
check_false "and it removed its registration socket" test -e /var/lib/kubelet/plugins_registry/$drv-reg.sock
check_false "no panic" grep -qi panic /tmp/agent.log
finish
