# The eBPF probes in the guest: they attach to the loaded module, see every
# probe and remove (counted against what was done), follow a reload, and an
# agent without privileges goes on with uevents alone.
. /guest/lib.sh
api=http://127.0.0.1:6443

mock-apiserver --listen 127.0.0.1:6443 --kubeconfig /tmp/kc >/tmp/apiserver.log 2>&1 &
until guest-tool http GET $api/version >/dev/null 2>&1; do sleep 0.05; done
for n in mock-guest unpriv; do guest-tool http POST $api/api/v1/nodes "{\"metadata\":{\"name\":\"$n\"}}" >/dev/null; done
modprobe mock-accel
KUBECONFIG=/tmp/kc NODE_NAME=mock-guest mock-accel-agent --rescan-interval=0 --admin-address=127.0.0.1:8080 --v=2 >/tmp/agent.log 2>&1 &
agent=$!

# metric NAME_WITH_LABELS [PORT]: its value, or 0
metric() {
    guest-tool http GET "http://127.0.0.1:${2:-8080}/metrics" >/tmp/m
    v=$(grep -F "$1 " /tmp/m | grep -v '^#' | awk '{print $NF}' | head -1)
    echo "${v:-0}"
}
# wait_metric NAME VALUE: until the metric has that value (60 s at most)
metric_is() { [ "$(metric "$1")" = "$2" ]; }
wait_metric() { wait_until 60 metric_is "$1" "$2"; }
# wait_dev DESC NODE COUNT [FILE VALUE]
wait_dev() {
    _node=$2 _count=$3
    shift 3
    if [ $# -gt 0 ]; then
        ms=$(guest-tool wait-devices --api $api --node $_node --count $_count --write "$1" "$2" 2>&1)
    else
        ms=$(guest-tool wait-devices --api $api --node $_node --count $_count 2>&1)
    fi
    [ $? -eq 0 ] && ok "$_desc ($ms ms)" || not_ok "$_desc: $ms"
}

_desc="startup"; wait_dev x mock-guest 4
wait_metric mock_accel_ebpf_attached 1
check "eBPF available" 1 "$(metric mock_accel_ebpf_available)"
check "probes attached to the loaded module" 1 "$(metric mock_accel_ebpf_attached)"

_desc="hot-plug PF 5"; wait_dev x mock-guest 5 $bus/new_device "5 1"
_desc="4 VFs"; wait_dev x mock-guest 9 $cls/mock1/sriov_numvfs 4
_desc="no VFs"; wait_dev x mock-guest 5 $cls/mock1/sriov_numvfs 0
_desc="unplug PF 5"; wait_dev x mock-guest 4 $bus/del_device 5
put $bus/fail_probe 1
put $bus/new_device 6
put $bus/del_device 6
wait_metric 'mock_accel_ebpf_events_total{kind="remove"}' 5
check "every probe seen (1 PF + 4 VFs)" 5 "$(metric 'mock_accel_ebpf_events_total{kind="probe"}')"
check "the injected probe failure seen, with its result" 1 "$(metric 'mock_accel_ebpf_events_total{kind="probe_failed"}')"
check "every remove seen (4 VFs + 1 PF)" 5 "$(metric 'mock_accel_ebpf_events_total{kind="remove"}')"
check "latencies measured from kernel timestamps" 1 \
    "$(grep -c 'mock_accel_event_to_slice_seconds_count{clock="kernel"}' /tmp/m)"
# The latency starts at the earliest instant known. A remove's kprobe fires
# before any uevent: the VF disable and the PF unplug are kernel-clocked. An
# add's first uevent (the bus device's) precedes the probe itself.
kclock=$(metric 'mock_accel_event_to_slice_seconds_count{clock="kernel"}')
check_true "the removes are measured from the kernel clock ($kclock of 4 steps)" test "$kclock" -ge 2

modprobe -r mock-accel
_desc="modprobe -r"; wait_dev x mock-guest 0
wait_metric mock_accel_ebpf_attached 0
check "unload: the removes of the 4 PFs seen" 9 "$(metric 'mock_accel_ebpf_events_total{kind="remove"}')"
check "unload: probes detached" 0 "$(metric mock_accel_ebpf_attached)"
modprobe mock-accel
_desc="modprobe"; wait_dev x mock-guest 4
wait_metric mock_accel_ebpf_attached 1
check "reload: probes attached again" 1 "$(metric mock_accel_ebpf_attached)"
check "two attaches in all" 2 "$(metric mock_accel_ebpf_attaches_total)"
_desc="hot-plug after the reload"; wait_dev x mock-guest 5 $bus/new_device "5 1"
wait_metric 'mock_accel_ebpf_events_total{kind="probe"}' 6
check "the re-attached probes see it" 6 "$(metric 'mock_accel_ebpf_events_total{kind="probe"}')"
sleep 2.5
check "no event seen by one source only" 0 "$(metric 'mock_accel_event_mismatches_total{seen_only_by="ebpf"}')$(metric 'mock_accel_event_mismatches_total{seen_only_by="uevent"}' | sed 's/^0$//')"
check "no ring-buffer drops" 0 "$(metric mock_accel_ebpf_ringbuf_drops_total)"

# Without privileges: no eBPF, a clear warning, uevents alone.
su -s /bin/sh nobody -c \
    "KUBECONFIG=/tmp/kc NODE_NAME=unpriv KUBELET_PLUGIN=false exec mock-accel-agent --rescan-interval=0 --admin-address=127.0.0.1:8081" >/tmp/unpriv.log 2>&1 &
unpriv=$!
_desc="unprivileged agent publishes"; wait_dev x unpriv 5
check_true "unprivileged: runs as nobody" sh -c "ps | grep '[m]ock-accel-agent.*8081' | grep -q nobody"
check "unprivileged: eBPF unavailable" 0 "$(metric mock_accel_ebpf_available 8081)"
check_true "unprivileged: it says why" grep -q "eBPF probes unavailable" /tmp/unpriv.log
_desc="unprivileged: hot-plug through uevents alone"; wait_dev x unpriv 6 $bus/new_device "7 0"
grep -m1 "eBPF probes unavailable" /tmp/unpriv.log | sed 's/^/LOG /'
grep "ResourceSlices published" /tmp/agent.log | grep -o 'latency_ms=[0-9.]* clock="*[a-z]*' | sed 's/^/LATENCY /'
kill $agent
pkill -f 'admin-address=127.0.0.1:8081'
finish
