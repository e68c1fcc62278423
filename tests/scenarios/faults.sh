# Faults in the guest with the real module: the agent killed (SIGKILL, by
# its test-only failpoints) at each step of prepare and unprepare while
# guest-tool plays the kubelet and retries, as the kubelet does; full CDI
# and plugin directories; the API unavailable; a device unplugged under a
# prepared claim; health flapping; lost uevents while claims come and go.
# After each case the invariants hold: the devices marked allocated
# (status=1) are exactly those of the claims prepared, one CDI spec per
# prepared claim, no temporary file left.
# Each case prints "FAULT|case|what was done|outcome|lost" (the table of
# `just faults`). FLAP_SECONDS (default 10) sets the health flapping's
# length; ALL_POINTS=1 kills the agent at every failpoint, else (./dev
# test) at one step of prepare's, its spec's write and one of unprepare's.
. /guest/lib.sh
api=http://127.0.0.1:6443
node=mock-guest
drv=mock-accel.example.com
cdi=/var/run/cdi
plugdir=/var/lib/kubelet/plugins/$drv
flap_seconds=${FLAP_SECONDS:-10}
# The crash points, in the order prepare and unprepare reach them, as the
# agent lists them (its failpoints.rs): all, or prepare's second and third
# (the status write, the spec's atomic write) and unprepare's second.
failpoints=$(mock-accel-agent --print-failpoints)
all_prepare=$(echo "$failpoints" | sed -n 's/^prepare: //p')
all_unprepare=$(echo "$failpoints" | sed -n 's/^unprepare: //p')
words() { echo $#; }
[ "$(words $all_prepare)" = 5 ] && [ "$(words $all_unprepare)" = 4 ] \
    || not_ok "the agent lists 5 prepare and 4 unprepare crash points: $failpoints"
status_written=$(echo $all_prepare | cut -d' ' -f2)
if [ "${ALL_POINTS:-0}" = 1 ]; then
    prepare_points=$all_prepare
    unprepare_points=$all_unprepare
else
    prepare_points=$(echo $all_prepare | cut -d' ' -f2,3)
    unprepare_points=$(echo $all_unprepare | cut -d' ' -f2)
fi
kills=0

mock-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kc >/tmp/apiserver.log 2>&1 &
wait_until 60 guest-tool http GET $api/version >/dev/null 2>&1
guest-tool http POST $api/api/v1/nodes "{\"metadata\":{\"name\":\"$node\"}}" >/dev/null
check_true "modprobe mock-accel" modprobe mock-accel
echo 2 >$cls/mock3/sriov_numvfs
mkdir -p $cdi $plugdir

# start_agent [FAILPOINTS]: the agent, with these failpoints set
start_agent() {
    FAILPOINTS="${1:-}" KUBECONFIG=/tmp/kc NODE_NAME=$node mock-accel-agent --rescan-interval=0 \
        --admin-address=127.0.0.1:8080 --v=2 >>/tmp/agent.log 2>&1 &
    agent=$!
    # Serving the kubelet: GetInfo answered on its registration socket (a
    # killed agent's socket file is still there, refusing connections).
    WAIT_INTERVAL=0.2 wait_until 60 guest-tool kubelet register >/dev/null 2>&1 || not_ok "the agent did not come up"
}
# killed: the agent died by SIGKILL (its failpoint), not otherwise
killed() {
    wait_until 60 gone $agent || { echo "# the agent is still running"; return 1; }
    wait $agent
    _rc=$?
    [ $_rc -eq 137 ] || { echo "# the agent exited with $_rc"; return 1; }
}
stop_agent() {
    kill $agent
    wait $agent
}
# retry CALL CLAIM: the kubelet's retries, until the call succeeds (60 s);
# prints how many calls it took
retry() {
    _n=0
    _end=$(($(date +%s) + 60))
    while [ "$(date +%s)" -lt $_end ]; do
        _n=$((_n + 1))
        if guest-tool kubelet "$1" "$2" >/tmp/call 2>&1; then
            echo $_n
            return 0
        fi
        sleep 0.5
    done
    echo "# never succeeded: $(cat /tmp/call)" >&2
    return 1
}
temporaries() { ls -a $cdi $plugdir 2>/dev/null | grep -c '\.tmp$'; }
# invariants CASE ALLOCATED SPECS: what must hold between cases
invariants() {
    check "$1: allocated" "$2" "$(allocated)"
    check "$1: CDI specs" "$3" "$(cdi_specs)"
    check "$1: no temporary file left" 0 "$(temporaries)"
}
# lost ALLOCATED SPECS: "nothing", or what differs from the expectation
lost() {
    _l=""
    [ "$(allocated)" = "$1" ] || _l="$_l allocated=[$(allocated)] expected [$1];"
    [ "$(cdi_specs)" = "$2" ] || _l="$_l specs=$(cdi_specs) expected $2;"
    [ "$(temporaries)" = 0 ] || _l="$_l $(temporaries) temporary files;"
    echo "${_l:- nothing}"
}
# contains TEXT PART: TEXT contains PART (literally)
contains() { case $1 in *"$2"*) return 0 ;; esac; return 1; }
# newclaim DEVICE...: a claim (named at random) allocated these devices
newclaim() { guest-tool claim --node $node "c-$(head -c 8 /proc/sys/kernel/random/uuid)" "$@"; }

start_agent
guest-tool wait-devices --api $api --node $node --count 6 >/dev/null || not_ok "the agent never published"
stop_agent

# 1. SIGKILL at each step of prepare; the kubelet retries until it succeeds.
for fp in $prepare_points; do
    kills=$((kills + 1))
    # The spec is prepare's second atomic write (the checkpoint's record the first).
    case $fp in atomic-write/*) set_fp="$fp=1*off->return" ;; *) set_fp="$fp=return" ;; esac
    start_agent "$set_fp"
    c=$(newclaim mock0)
    check_false "kill at $fp: the call fails" guest-tool kubelet prepare "$c"
    check_true "kill at $fp: by SIGKILL" killed
    # The kubelet retries after a backoff; by then a temporary file a
    # killed writer left is old enough to be swept.
    sleep 5
    start_agent
    calls=$(retry prepare "$c")
    check_true "kill at $fp: the retried prepare succeeds" test -n "$calls"
    invariants "kill at $fp, prepared" mock0 1
    check_true "kill at $fp: the spec names mock0" grep -q '"path": "/dev/mock-accel/mock0"' $cdi/k8s.$drv-accel_${c##*/}.json
    check_true "kill at $fp: unprepare" guest-tool kubelet unprepare "$c"
    invariants "kill at $fp, unprepared" "" 0
    echo "FAULT|agent SIGKILLed at $fp|prepare of a 1-device claim; kubelet retried|prepared after $calls retried call(s), then unprepared|$(lost "" 0)"
    stop_agent
done

# A claim killed mid-prepare whose pod is deleted instead: the kubelet
# unprepares it; the device then goes to another claim, and only to it.
start_agent $status_written=return
kills=$((kills + 1))
c=$(newclaim mock0)
guest-tool kubelet prepare "$c" >/dev/null 2>&1
check_true "kill mid-prepare, pod deleted: killed" killed
start_agent
check "the half-prepared device is marked" mock0 "$(allocated)"
check_true "the kubelet unprepares it" retry unprepare "$c"
c2=$(newclaim mock0)
check_true "another claim gets mock0" guest-tool kubelet prepare "$c2"
invariants "mock0 to the next claim" mock0 1
check_true "the first claim's spec never appears" test ! -e $cdi/k8s.$drv-accel_${c##*/}.json
guest-tool kubelet unprepare "$c2" >/dev/null
echo "FAULT|agent SIGKILLed mid-prepare, then the pod deleted|unprepare of the half-prepared claim, its device to a new claim|device released, then prepared once for the new claim|$(lost "" 0)"
stop_agent

# 2. SIGKILL at each step of unprepare; the kubelet retries.
for fp in $unprepare_points; do
    kills=$((kills + 1))
    # Prepare writes three times (record, spec, completed); then unprepare's.
    case $fp in atomic-write/*) set_fp="$fp=3*off->return" ;; *) set_fp="$fp=return" ;; esac
    start_agent "$set_fp"
    c=$(newclaim mock1)
    check_true "kill at $fp: prepare" guest-tool kubelet prepare "$c"
    check_false "kill at $fp: the unprepare fails" guest-tool kubelet unprepare "$c"
    check_true "kill at $fp: by SIGKILL" killed
    sleep 5
    start_agent
    calls=$(retry unprepare "$c")
    check_true "kill at $fp: the retried unprepare succeeds" test -n "$calls"
    invariants "kill at $fp, unprepared" "" 0
    c2=$(newclaim mock1)
    check_true "kill at $fp: mock1 prepares again" guest-tool kubelet prepare "$c2"
    guest-tool kubelet unprepare "$c2" >/dev/null
    echo "FAULT|agent SIGKILLed at $fp|unprepare of a prepared claim; kubelet retried|unprepared after $calls retried call(s); the device prepared again|$(lost "" 0)"
    stop_agent
done

# 3. Full directories at prepare: a clear error, nothing half-written,
# success once there is space.
mount -t tmpfs -o size=64k tmpfs $cdi
start_agent
dd if=/dev/zero of=$cdi/fill bs=4k count=64 2>/dev/null
c=$(newclaim mock2)
out=$(guest-tool kubelet prepare "$c" 2>&1)
check_true "CDI directory full: refused, saying why" contains "$out" "writing the CDI spec $cdi/k8s.$drv-accel_${c##*/}.json: No space left on device"
invariants "CDI directory full" "" 0
rm $cdi/fill
check_true "CDI directory full: the retry once there is space succeeds" retry prepare "$c"
invariants "CDI directory with space again" mock2 1
guest-tool kubelet unprepare "$c" >/dev/null
echo "FAULT|CDI directory full (64 KiB tmpfs) at prepare|prepare; space freed; retried|refused (writing the CDI spec: $(echo "$out" | sed 's/.*: //')), device freed again; prepared on retry|$(lost "" 0)"
stop_agent
umount $cdi

mount -t tmpfs -o size=64k tmpfs $plugdir
start_agent
c=$(newclaim mock2)
guest-tool kubelet prepare "$c" >/dev/null
dd if=/dev/zero of=$plugdir/fill bs=4k count=64 2>/dev/null
c2=$(newclaim mock3-vf0)
out=$(guest-tool kubelet prepare "$c2" 2>&1)
check_true "plugin directory full: refused, saying why" contains "$out" "writing the checkpoint $plugdir/checkpoint.json: No space left on device"
invariants "plugin directory full" mock2 1
out2=$(guest-tool kubelet unprepare "$c" 2>&1)
rm $plugdir/fill
check_true "plugin directory full: the retried prepare succeeds" retry prepare "$c2"
check_true "plugin directory full: the retried unprepare succeeds" retry unprepare "$c"
invariants "plugin directory with space again" mock3_vf0 1
guest-tool kubelet unprepare "$c2" >/dev/null
echo "FAULT|plugin directory (checkpoint) full (64 KiB tmpfs)|prepare, and unprepare, while full; space freed; retried|prepare refused (writing the checkpoint: $(echo "$out" | sed 's/.*: //')), nothing applied; unprepare while full: $(echo "$out2" | sed 's/^[^ ]* //' | cut -c1-5) (device freed, the record kept); both done on retry|$(lost "" 0)"
stop_agent
umount $plugdir

# 4. The API unavailable (every request 503) for 10 s: prepares of new
# claims fail and are retried; the agent then converges without a storm.
start_agent
c=$(newclaim mock2)
guest-tool http DELETE $api/_mock/requests >/dev/null
guest-tool http POST $api/_mock/faults '{"count":1000000,"code":503}' >/dev/null
out=$(guest-tool kubelet prepare "$c" 2>&1)
check_true "API down: prepare refused, saying why" contains "$out" "error: reading ResourceClaim"
echo "5 1" >$bus/new_device
sleep 10
guest-tool http DELETE $api/_mock/faults >/dev/null
guest-tool http GET $api/_mock/requests | tail -1 >/tmp/during
t0=$(date +%s)
guest-tool http DELETE $api/_mock/requests >/dev/null
check_true "API back: the hot-plug during the outage is published" guest-tool wait-devices --api $api --node $node --count 7
check_true "API back: the prepare retried succeeds" retry prepare "$c"
sleep 20
guest-tool http GET $api/_mock/requests | tail -1 >/tmp/after
writes() { guest-tool requests "$1" --verbs create,update,patch,delete; }
reqs() { guest-tool requests "$1"; }
w_after=$(writes /tmp/after)
check_true "API back: no storm of writes ($w_after in 20 s)" test "$w_after" -le 12
# Each request retried a few times within a second, then the caller's own
# backoff (kube's default retry had kept requests going for minutes: 481
# in these 10 s).
r_during=$(reqs /tmp/during)
check_true "API down: the agent backs off ($r_during requests in 10 s)" test "$r_during" -le 150
invariants "API outage" mock2 1
guest-tool kubelet unprepare "$c" >/dev/null
echo 5 >$bus/del_device
echo "FAULT|API server answering 503 to everything for 10 s|a prepare and a hot-plug during it|prepare refused then done on retry; the hot-plug published after; $r_during requests tried during the outage ($(tr -d '{}"' </tmp/during)), $w_after writes in the 20 s after ($(tr -d '{}"' </tmp/after))|$(lost "" 0)"

# 5. A device unplugged under a prepared claim (surprise removal).
echo "5 1" >$bus/new_device
guest-tool wait-devices --api $api --node $node --count 7 >/dev/null
c=$(newclaim mock5)
check_true "prepare mock5" guest-tool kubelet prepare "$c"
echo 5 >$bus/del_device
check_true "unplugged: the pool drops it" guest-tool wait-devices --api $api --node $node --count 6
check "unplugged: unprepare succeeds" "${c##*/} ok" "$(guest-tool kubelet unprepare "$c")"
invariants "unplugged under a claim" "" 0
echo "5 1" >$bus/new_device
check_true "plugged again: published" guest-tool wait-devices --api $api --node $node --count 7
check "plugged again: free" 0 "$(cat $cls/mock5/status)"
echo 5 >$bus/del_device
guest-tool wait-devices --api $api --node $node --count 6 >/dev/null
echo "FAULT|device unplugged (del_device) under a prepared claim|unplug, then the kubelet's unprepare|slice dropped the device, unprepare ok, the re-plugged device free|$(lost "" 0)"

# 6. Health flapping every 100 ms: the agent and the API stay calm.
guest-tool http DELETE $api/_mock/requests >/dev/null
flips=0
end=$(($(date +%s) + flap_seconds))
while [ "$(date +%s)" -lt $end ]; do
    echo failed >$cls/mock1/health
    sleep 0.1
    echo ok >$cls/mock1/health
    sleep 0.1
    flips=$((flips + 2))
done
guest-tool http GET $api/_mock/requests | tail -1 >/tmp/flap
check_true "flapping: the agent is alive" kill -0 $agent
guest-tool http GET http://127.0.0.1:8080/livez >/tmp/livez
check "flapping: livez" 200 "$(head -1 /tmp/livez)"
# The end state reaches the API: mock1 healthy, without the taint.
wait_until 60 sh -c "! guest-tool http GET '$api/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3D$node' | grep -q '$drv/health'"
check_false "flapping: the final healthy state is published (no taint)" sh -c "guest-tool http GET '$api/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3D$node' | grep -q '$drv/health'"
guest-tool http GET $api/_mock/requests | tail -1 >/tmp/flap_end
w=$(guest-tool requests /tmp/flap --verbs update,patch,create --resource resourceslices)
w_end=$(guest-tool requests /tmp/flap_end --verbs update,patch,create --resource resourceslices)
# Damped (the agent's flapping.rs): the first changes go out, then the
# device is held failed until it has been stable for 10 s.
check_true "flapping: damped, $w slice writes for $flips changes" test "$w" -le 6
guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
check "flapping: no device flapping any more" "mock_accel_health_flapping_devices 0" "$(grep '^mock_accel_health_flapping_devices ' /tmp/metrics)"
echo "FAULT|health of mock1 flapping failed/ok every 100 ms for ${flap_seconds} s|$flips changes|agent alive and ready; $w slice writes during the flapping, $w_end until settled, $(reqs /tmp/flap_end) API requests in all|$(lost "" 0)"

# 7. Lost uevents while claims come and go: the agent frozen, its socket
# overflows; claims wait, then all succeed; the pool is right.
(
    i=0
    while [ $i -lt 10 ]; do
        i=$((i + 1))
        d=mock$((i % 2))
        cc=$(guest-tool claim --node $node "lost$i" $d)
        guest-tool kubelet prepare "$cc" >/dev/null 2>&1 || echo "prepare lost$i failed"
        guest-tool kubelet unprepare "$cc" >/dev/null 2>&1 || echo "unprepare lost$i failed"
    done
    echo done
) >/tmp/claims.log 2>&1 &
claims=$!
kill -STOP $agent
for round in 1 2 3 4 5 6; do
    for pf in 2 3; do echo 8 >$cls/mock$pf/sriov_numvfs; echo 0 >$cls/mock$pf/sriov_numvfs; done
done
echo 4 >$cls/mock2/sriov_numvfs
sleep 2
kill -CONT $agent
wait $claims
check "lost uevents: every claim prepared and unprepared" done "$(cat /tmp/claims.log)"
check_true "lost uevents: the pool is right" guest-tool wait-devices --api $api --node $node --count 8
guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
check_true "lost uevents: the overflow was noticed" grep -qE '^mock_accel_uevent_overflows_total [1-9]' /tmp/metrics
invariants "lost uevents" "" 0
echo "FAULT|uevents lost (agent frozen, socket overflowed by 26 SR-IOV toggles) while 10 claims came and went|freeze 2+ s, then thaw|overflow seen, full rescan, pool right, every claim prepared and unprepared|$(lost "" 0)"

# 8. rmmod under a prepared claim.
c=$(newclaim mock3)
guest-tool kubelet prepare "$c" >/dev/null
echo 0 >$cls/mock2/sriov_numvfs
check_true "rmmod with a prepared claim" modprobe -r mock-accel
check_true "rmmod: the pool empties" guest-tool wait-devices --api $api --node $node --count 0
check "rmmod: unprepare succeeds" "${c##*/} ok" "$(guest-tool kubelet unprepare "$c")"
check "rmmod: no spec left" 0 "$(cdi_specs)"
modprobe mock-accel
check_true "modprobe: published again" guest-tool wait-devices --api $api --node $node --count 4
check "modprobe: nothing allocated" "" "$(allocated)"
echo "FAULT|rmmod with a prepared claim|modprobe -r, the kubelet's unprepare, modprobe|pool emptied, unprepare ok, devices back free|$(lost "" 0)"

guest-tool http GET http://127.0.0.1:8080/metrics >/tmp/metrics
grep -E '^mock_accel_(prepares_total|unprepares_total|checkpoint_errors_total|rescans_total|uevent_overflows_total)' /tmp/metrics | sed 's/^/METRIC /'
stop_agent
check_false "no panic in the agent's log" grep -qi panic /tmp/agent.log
check "the agent was killed by its failpoints $kills times" $kills "$(grep -c 'failpoint: SIGKILL' /tmp/agent.log)"
finish
