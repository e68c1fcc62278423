# Random operations on the module from every side at once, in rounds, for
# STRESS_SECONDS (default 20), on two vCPUs: hot-plug (new_device,
# del_device, probes made to fail), SR-IOV up and down, status and health
# writes, fabric attaches (half the rounds load the module with
# fabric_attach_ms: attach, detach, armed failures, attaches pending while
# their function goes), bind/unbind, reads of every attribute and of the character devices
# (descriptors held open while their device goes), and each round ends with
# `modprobe -r` racing all of it. Meant for the sanitizing kernel (KASAN,
# lockdep, kmemleak, UBSAN, debugobjects, list debugging: the host checks
# the kernel log), and run on the plain kernels too.
# Prints "stress: ..." with the operation counts.
. /guest/lib.sh

: "${STRESS_SECONDS:=20}"
round_seconds=5
[ "$STRESS_SECONDS" -ge 60 ] && round_seconds=15
t0=$(date +%s)
end=$((t0 + STRESS_SECONDS))
drv=$bus/drivers/mock-accel

# rand_dev [pf]: a random class device (any, or PFs only); fails when none.
rand_dev() {
    set --
    for f in $cls/*; do
        case $f in
            "$cls/*") return 1 ;;
            *_vf*) [ "$want" = pf ] || set -- "$@" "${f##*/}" ;;
            *) set -- "$@" "${f##*/}" ;;
        esac
    done
    [ $# -gt 0 ] || return 1
    shift $((RANDOM % $#))
    echo "$1"
}
rand_pf() { want=pf rand_dev; }

op_plug() {
    id=$((RANDOM % 8 + 4))
    [ $((RANDOM % 16)) = 0 ] && echo 1 >$bus/fail_probe
    # Mostly what makes sense (add what is not there, remove what is),
    # sometimes not (EEXIST, ENODEV, ERANGE for a NUMA node out of range).
    there=0
    [ -e "$cls/mock$id" ] && there=1
    [ $((RANDOM % 4)) = 0 ] && there=$((1 - there))
    if [ $there = 0 ]; then
        echo "$id $((RANDOM % 3))" >$bus/new_device
    else
        echo $id >$bus/del_device
    fi
}
op_sriov() {
    d=$(rand_pf) || return 1
    if [ $((RANDOM % 3)) = 0 ]; then n=0; else n=$((RANDOM % 9)); fi
    echo $n >$cls/$d/sriov_numvfs
}
op_status() {
    d=$(rand_dev) || return 1
    echo $((RANDOM % 2)) >$cls/$d/status
}
op_health() {
    d=$(rand_dev) || return 1
    set -- ok degraded failed
    shift $((RANDOM % 3))
    echo "$1" >$cls/$d/health
}
op_attach() {
    d=$(rand_dev) || return 1
    case $((RANDOM % 5)) in
        0) echo 1 >$cls/$d/fail_attach ;;
        1) echo detach >$cls/$d/attach ;;
        *) echo attach >$cls/$d/attach ;;
    esac
}
op_bind() {
    set -- $bus/devices/*
    [ -e "$1" ] || return 1
    shift $((RANDOM % $#))
    a=${1##*/}
    echo "$a" >$drv/unbind
    echo "$a" >$drv/bind
}
# held_read 3<DEVICE: a descriptor held while the device may go (read
# fails with ENODEV then; the module cannot unload meanwhile).
held_read() {
    usleep $((RANDOM % 50000))
    cat <&3 >/dev/null
}
op_read() {
    d=$(rand_dev) || return 1
    if [ $((RANDOM % 4)) = 0 ]; then
        held_read 3</dev/mock-accel/$d
        return
    fi
    cat /dev/mock-accel/$d $cls/$d/uuid $cls/$d/type $cls/$d/memory_size $cls/$d/capabilities \
        $cls/$d/numa_node $cls/$d/fw_version $cls/$d/status $cls/$d/health $cls/$d/attach $cls/$d/dev >/dev/null
}

# work NAME: run op_NAME until /tmp/stop appears; counts in /tmp/count.NAME
work() {
    ok_n=0
    err_n=0
    while [ ! -e /tmp/stop ]; do
        if op_$1 2>/dev/null; then ok_n=$((ok_n + 1)); else err_n=$((err_n + 1)); fi
    done
    echo "$ok_n $err_n" >/tmp/count.$1
}

ops="plug sriov status health attach bind read"
rounds=0
total_ok=0
total_err=0
raced_unloads=0
failed_unloads=0
leftovers=0
idle_workers=0
while [ "$(date +%s)" -lt "$end" ]; do
    rounds=$((rounds + 1))
    fabric=$((RANDOM % 2 * (RANDOM % 50 + 1)))
    if ! modprobe mock-accel num_pfs=$((RANDOM % 4 + 1)) max_vfs=8 numa_nodes=$((RANDOM % 3 + 1)) \
        fabric_attach_ms=$fabric; then
        not_ok "modprobe in round $rounds"
        break
    fi
    rm -f /tmp/stop /tmp/count.*
    for op in $ops; do work $op & done
    sleep $round_seconds
    # The unload races every operation (it fails with EBUSY while a
    # character device is held open).
    modprobe -r mock-accel 2>/dev/null && raced_unloads=$((raced_unloads + 1))
    sleep 1
    touch /tmp/stop
    wait
    if [ -e /sys/module/mock_accel ] && ! modprobe -r mock-accel; then
        failed_unloads=$((failed_unloads + 1))
        echo 0 >$bus/fail_probe
        for f in $cls/*_vf*/status $cls/*/status; do echo 0 >"$f" 2>/dev/null; done
        modprobe -r mock-accel
    fi
    for p in $bus $cls /sys/devices/mock-accel /dev/mock-accel; do
        [ -e $p ] && leftovers=$((leftovers + 1))
    done
    for op in $ops; do
        o=0
        e=0
        [ -f /tmp/count.$op ] && read -r o e </tmp/count.$op
        total_ok=$((total_ok + o))
        total_err=$((total_err + e))
        [ $((o + e)) -gt 0 ] || idle_workers=$((idle_workers + 1))
        eval "ops_$op=\$((\${ops_$op:-0} + o + e))"
    done
done
seconds=$(($(date +%s) - t0))
echo "stress: $rounds rounds, $((total_ok + total_err)) operations ($total_ok done, $total_err refused) in $seconds s;" \
    "plug $ops_plug, sriov $ops_sriov, status $ops_status, health $ops_health, attach $ops_attach, bind $ops_bind, read $ops_read;" \
    "$raced_unloads unloads raced the operations"

check_true "at least one round ($rounds)" test "$rounds" -ge 1
check "every worker ran in every round" 0 "$idle_workers"
check_true "operations were done ($total_ok)" test "$total_ok" -gt 0
check "every unload succeeded once the operations stopped" 0 "$failed_unloads"
check "nothing of the module left after any round" 0 "$leftovers"
check_true "it loads again" modprobe mock-accel
check "and works" "mock0 mock1 mock2 mock3" "$(list $cls)"
check_true "modprobe -r" modprobe -r mock-accel
finish
