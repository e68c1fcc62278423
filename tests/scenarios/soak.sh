# The soak: HOTPLUGS hot-plug cycles (PF 5 added, then removed, each seen
# in the API) beside CLAIMS claim cycles (created and allocated, prepared
# by guest-tool playing the kubelet, checked in sysfs and CDI, unprepared,
# deleted), the two running at once. Prints the agent's RSS and open file
# descriptors at start, every tenth of the hot-plugs and at the end, and
# its ResourceSlice writes per hot-plug change in each half ("SOAK ..."
# lines); checks nothing is stuck or leaked and that memory, descriptors
# and writes per change stay flat. SOAK_HOTPLUGS (default 100) and
# SOAK_CLAIMS (default 20) set the length (`just soak`: 1000 and 200).
. /guest/lib.sh
api=http://127.0.0.1:6443
node=mock-guest
drv=mock-accel.example.com
cdi=/var/run/cdi
hotplugs=${SOAK_HOTPLUGS:-100}
claims=${SOAK_CLAIMS:-20}

mock-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kc >/tmp/apiserver.log 2>&1 &
wait_until 60 guest-tool http GET $api/version >/dev/null 2>&1
guest-tool http POST $api/api/v1/nodes "{\"metadata\":{\"name\":\"$node\"}}" >/dev/null
check_true "modprobe mock-accel" modprobe mock-accel
echo 2 >$cls/mock3/sriov_numvfs
KUBECONFIG=/tmp/kc NODE_NAME=$node mock-accel-agent --admin-address=127.0.0.1:8080 --v=1 >/tmp/agent.log 2>&1 &
agent=$!
check_true "the agent publishes" guest-tool wait-devices --api $api --node $node --count 6
check_true "the kubelet registers the plugin" guest-tool kubelet register

rss() { awk '/^VmRSS/ { print $2 }' /proc/$agent/status; }
fds() { ls /proc/$agent/fd | wc -l; }
slice_writes() {
    guest-tool http GET $api/_mock/requests | tail -1 | guest-tool requests - --verbs create,update,patch,delete --resource resourceslices
}
# One cycle, to warm the agent up (its first claim, its first hot-plug).
guest-tool wait-devices --api $api --node $node --count 7 --write $bus/new_device "5 1" >/dev/null
guest-tool wait-devices --api $api --node $node --count 6 --write $bus/del_device 5 >/dev/null
c=$(guest-tool claim --node $node warm mock0)
guest-tool kubelet prepare "$c" >/dev/null && guest-tool kubelet unprepare "$c" >/dev/null
guest-tool http DELETE $api/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/warm >/dev/null
rss0=$(rss)
fds0=$(fds)
echo "SOAK start rss_kb=$rss0 fds=$fds0"
started=$(date +%s)

# The claims, beside the hot-plugs: PFs 0-2 and mock3's two VFs in turn.
(
    bad=0
    i=0
    while [ $i -lt $claims ]; do
        i=$((i + 1))
        case $((i % 5)) in 3) d=mock3-vf0 f=mock3_vf0 ;; 4) d=mock3-vf1 f=mock3_vf1 ;; *) d=mock$((i % 5)) f=mock$((i % 5)) ;; esac
        c=$(guest-tool claim --node $node "s$i" $d) || { echo "claim s$i: $c"; bad=$((bad + 1)); continue; }
        uid=${c##*/}
        out=$(guest-tool kubelet prepare "$c")
        [ "$out" = "$uid ok $d=k8s.$drv/accel=$uid-$d" ] || { echo "prepare s$i: $out"; bad=$((bad + 1)); }
        [ "$(cat $cls/$f/status)" = 1 ] || { echo "s$i: $f not allocated"; bad=$((bad + 1)); }
        [ -f $cdi/k8s.$drv-accel_$uid.json ] || { echo "s$i: no CDI spec"; bad=$((bad + 1)); }
        out=$(guest-tool kubelet unprepare "$c")
        [ "$out" = "$uid ok" ] || { echo "unprepare s$i: $out"; bad=$((bad + 1)); }
        [ "$(cat $cls/$f/status)" = 0 ] || { echo "s$i: $f still allocated"; bad=$((bad + 1)); }
        [ ! -e $cdi/k8s.$drv-accel_$uid.json ] || { echo "s$i: CDI spec left"; bad=$((bad + 1)); }
        guest-tool http DELETE $api/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/s$i >/dev/null ||
            { echo "delete s$i failed"; bad=$((bad + 1)); }
        echo $i >/tmp/claims.progress
    done
    echo "claims done: $claims cycles, $bad problems"
) >/tmp/claims.log 2>&1 &
claimer=$!

guest-tool http DELETE $api/_mock/requests >/dev/null
half=$((hotplugs / 2))
tenth=$(((hotplugs + 9) / 10))
bad=0
i=0
while [ $i -lt $hotplugs ]; do
    i=$((i + 1))
    guest-tool wait-devices --api $api --node $node --count 7 --write $bus/new_device "5 1" >/dev/null || bad=$((bad + 1))
    guest-tool wait-devices --api $api --node $node --count 6 --write $bus/del_device 5 >/dev/null || bad=$((bad + 1))
    if [ $i -eq $half ]; then
        w1=$(slice_writes)
        guest-tool http DELETE $api/_mock/requests >/dev/null
    fi
    [ $((i % tenth)) -eq 0 ] && echo "SOAK hotplug $i/$hotplugs rss_kb=$(rss) fds=$(fds) claims_done=$(cat /tmp/claims.progress 2>/dev/null || echo 0) t=$(($(date +%s) - started))s"
done
w2=$(slice_writes)
wait $claimer
elapsed=$(($(date +%s) - started))
rss1=$(rss)
fds1=$(fds)
echo "SOAK end rss_kb=$rss1 fds=$fds1 after ${elapsed} s"
echo "SOAK slice writes per hot-plug change: first half $w1 for $((2 * half)) changes, second half $w2 for $((2 * (hotplugs - half))) changes"
echo "SOAK claims: $(tail -1 /tmp/claims.log)"

check "every hot-plug seen in the API ($((2 * hotplugs)) changes)" 0 "$bad"
check "every claim cycle clean" "claims done: $claims cycles, 0 problems" "$(tail -1 /tmp/claims.log)"
grep -v '^claims done' /tmp/claims.log | head -5
check "no CDI spec left" 0 "$(cdi_specs)"
check "no temporary file left" 0 "$(ls -a $cdi 2>/dev/null | grep -c '\.tmp$')"
check "nothing allocated" "" "$(allocated)"
guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
check "no claim held in the checkpoint" "mock_accel_prepared_claims 0" "$(grep '^mock_accel_prepared_claims ' /tmp/metrics)"
check_true "the pool is right at the end" guest-tool wait-devices --api $api --node $node --count 6
# Flat: memory within a quarter of the warmed-up figure, descriptors within
# two (a connection being replaced), writes per change no higher in the
# second half than in the first (10% slack).
check_true "RSS flat ($rss0 kB -> $rss1 kB)" test $((rss1 * 4)) -le $((rss0 * 5))
check_true "open descriptors flat ($fds0 -> $fds1)" test "$fds1" -le $((fds0 + 2))
check_true "slice writes per change stable ($w1 then $w2)" test $((w2 * 10 * half)) -le $((w1 * 11 * (hotplugs - half) + 10))
# A PF's hot-plug changes two slices: the counter sets' and the devices'.
check_true "at most two slice writes per change ($w2 for $((2 * (hotplugs - half))))" test "$w2" -le $((4 * (hotplugs - half)))
grep -E '^mock_accel_(prepares_total|unprepares_total|slice_writes_total|uevents_total|rescans_total)' /tmp/metrics | sed 's/^/METRIC /'
kill $agent
wait_until 30 gone $agent
check_false "no panic" grep -qi panic /tmp/agent.log
finish
