# Runtime add/delete of a PF, VF enable/disable, status and health writes,
# driver unbind/bind: each step's state, and every uevent, recorded in
# order. The host test compares the event sequence (lines "EVENT ...").
. /guest/lib.sh

uevents_start /tmp/events
modprobe mock-accel num_pfs=1 max_vfs=4
p=$cls/mock5

check_write "new_device '5 1'" ok $bus/new_device "5 1"
check "mock5 exists" "mock0 mock5" "$(list $cls)"
check "mock5 on the NUMA node asked for" 1 "$(cat $p/numa_node)"
check "mock5 PCI address" 0000:1f:00.0 "$(basename "$(readlink $p/device)")"
check_true "mock5 char device" test -c /dev/mock-accel/mock5

check_write "enable 2 VFs" ok $p/sriov_numvfs 2
check "sriov_numvfs reads 2" 2 "$(cat $p/sriov_numvfs)"
check "VF class devices" "mock0 mock5 mock5_vf0 mock5_vf1" "$(list $cls)"
check "VF physfn link" mock5 "$(basename "$(readlink $cls/mock5_vf1/physfn)")"
check "PF virtfn links" "mock5_vf0 mock5_vf1" \
    "$(basename "$(readlink $p/virtfn0)") $(basename "$(readlink $p/virtfn1)")"
check "VF type" vf "$(cat $cls/mock5_vf0/type)"
check "VF memory is half the PF's" 8589934592 "$(cat $cls/mock5_vf0/memory_size)"
check_true "VF char device" test -c /dev/mock-accel/mock5_vf1
check "VF char device identity" "MOCK_ACCEL_DEVICE=mock5_vf1" "$(grep DEVICE= /dev/mock-accel/mock5_vf1)"
vf1_uuid=$(cat $cls/mock5_vf1/uuid)

check_write "allocate VF 1" ok $cls/mock5_vf1/status 1
check "VF 1 status" 1 "$(cat $cls/mock5_vf1/status)"
check_write "same status again is a no-op" ok $cls/mock5_vf1/status 1
check_write "inject a failure" ok $p/health failed
check "health reads failed" failed "$(cat $p/health)"
check_write "a failed device cannot be allocated" EIO $p/status 1
check "status unchanged" 0 "$(cat $p/status)"
check_write "health back to ok" ok $p/health ok
check_write "disable VFs while one is allocated" EBUSY $p/sriov_numvfs 0
check "VFs still there" 2 "$(cat $p/sriov_numvfs)"
check_write "free VF 1" ok $cls/mock5_vf1/status 0
check_write "disable VFs" ok $p/sriov_numvfs 0
check "VFs gone" "mock0 mock5" "$(list $cls)"
check "virtfn links gone" "" "$(ls $p | grep virtfn)"
check_false "VF char device gone" test -e /dev/mock-accel/mock5_vf1

check_write "enable 4 VFs again" ok $p/sriov_numvfs 4
check "VF UUIDs are stable" "$vf1_uuid" "$(cat $cls/mock5_vf1/uuid)"
check "VF memory is a quarter now" 4294967296 "$(cat $cls/mock5_vf1/memory_size)"
check_write "unbind the PF driver" ok $bus/drivers/mock-accel/unbind 0000:1f:00.0
check "unbind removes the PF's class device and VFs" mock0 "$(list $cls)"
check "the PF stays on the bus" 0000:1f:00.0 "$(ls $bus/devices | grep 1f)"
check_write "bind it again" ok $bus/drivers/mock-accel/bind 0000:1f:00.0
check "rebound with no VFs" 0 "$(cat $p/sriov_numvfs)"

check_write "inject a probe failure" ok $bus/fail_probe 1
check_write "new_device 7 (its probe fails)" ok $bus/new_device 7
check "the failed device is on the bus" 0000:21:00.0 "$(ls $bus/devices | grep 21)"
check_false "but has no driver" test -e $bus/devices/0000:21:00.0/driver
check_false "nor class device" test -e $cls/mock7
check "the injected failure is used up" 0 "$(cat $bus/fail_probe)"
check_write "bind it by hand" ok $bus/drivers/mock-accel/bind 0000:21:00.0
check "now it has a class device" mock7 "$(list $cls | tr ' ' '\n' | grep mock7)"
check_write "del_device 7" ok $bus/del_device 7

check_write "del_device 5" ok $bus/del_device 5
check "mock5 gone" mock0 "$(list $cls)"
check_false "mock5 bus device gone" test -e $bus/devices/0000:1f:00.0
modprobe -r mock-accel
uevents_stop

check "no events lost" "" "$(grep ENOBUFS /tmp/events)"
check_true "class add carries the UUID" grep -q "mock5_vf1 .*MOCK_ACCEL_UUID=$vf1_uuid" /tmp/events
sed 's/^/EVENT /' /tmp/events
finish
