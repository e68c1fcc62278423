# Concurrent writers and readers on every state-changing file for a few
# seconds (run with 2 vCPUs): no deadlock (the host's deadline), no oops or
# warning (the host checks dmesg), and a consistent state afterwards.
. /guest/lib.sh

modprobe mock-accel num_pfs=2 max_vfs=8
end=$(($(date +%s) + 5))
# Each job runs for the 5 s and at least 5 rounds (a sanitizing kernel under
# emulation is slow: the check is that each job ran, not how fast).
loop() { n=0; while [ "$(date +%s)" -lt $end ] || [ $n -lt 5 ]; do "$@"; n=$((n + 1)); done; echo "$n" >"/tmp/count.$1"; }

sriov() { echo 8 >$cls/mock0/sriov_numvfs; echo 0 >$cls/mock0/sriov_numvfs; }
alloc() { echo 1 >$cls/mock0_vf3/status; echo 0 >$cls/mock0_vf3/status; }
plug() { echo 5 >$bus/new_device; echo 2 >$cls/mock5/sriov_numvfs; echo 1 >$cls/mock5_vf1/status; echo 5 >$bus/del_device; }
rebind() { echo 0000:1b:00.0 >$bus/drivers/mock-accel/unbind; echo 0000:1b:00.0 >$bus/drivers/mock-accel/bind; }
health() { echo failed >$cls/mock1/health; echo ok >$cls/mock1/health; }
readall() { cat /dev/mock-accel/* $cls/*/status $cls/*/uuid $cls/*/sriov_numvfs >/dev/null; }

for job in sriov alloc plug rebind health readall; do
    loop $job 2>/dev/null &
done
wait
for job in sriov alloc plug rebind health readall; do
    n=$(cat /tmp/count.$job)
    check_true "$job ran ($n rounds)" test "$n" -ge 5
done

# Whatever the interleaving, the state is consistent and can be cleaned up.
echo 0 >$cls/mock0_vf3/status 2>/dev/null
check_write "mock0's VFs can be disabled" ok $cls/mock0/sriov_numvfs 0
check "no VF left" "" "$(ls $cls | grep _vf)"
check "mock5 is gone or whole" ok "$( [ ! -e $cls/mock5 ] || [ -e $bus/devices/0000:1f:00.0 ] && echo ok)"
check "mock1 bound" mock1 "$(ls $cls | grep mock1)"
check_true "modprobe -r" modprobe -r mock-accel
check_false "nothing left" test -e /sys/devices/mock-accel
finish
