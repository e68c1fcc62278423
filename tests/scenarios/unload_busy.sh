# Unloading with VFs enabled, devices allocated, a device failed and a
# surprise removal; an open character device pins the module.
. /guest/lib.sh

modprobe mock-accel
for i in 0 1 2 3; do put $cls/mock$i/sriov_numvfs 8; done
check "36 functions" 36 "$(ls $cls | wc -l)"
put $cls/mock0/status 1
put $cls/mock1_vf3/status 1
put $cls/mock2_vf7/status 1
put $cls/mock3_vf1/health failed

check_write "surprise removal of a PF with allocated VFs" ok $bus/del_device 1
check "its VFs went with it" 0 "$(ls $cls | grep -c mock1)"

exec 3</dev/mock-accel/mock2_vf0
check_false "modprobe -r refused while a char device is open" modprobe -r mock-accel
check "still loaded" mock_accel "$(lsmod | awk '$1 == "mock_accel" {print $1}')"
check "the open device reads" "MOCK_ACCEL_DEVICE=mock2_vf0" "$(grep DEVICE= <&3)"
check_write "disable mock2's VFs refused: one is allocated" EBUSY $cls/mock2/sriov_numvfs 0
check_write "del_device 2 under the open file" ok $bus/del_device 2
check "reading a removed device: ENODEV" "cat: read error: No such device" "$(cat <&3 2>&1)"
exec 3<&-

check_true "modprobe -r with VFs enabled and devices allocated" modprobe -r mock-accel
check_false "class gone" test -e $cls
check_false "bus gone" test -e $bus
check "char devices gone" "" "$(ls /dev/mock-accel 2>/dev/null)"
check "char region released" "" "$(grep mock-accel /proc/devices)"

check_true "modprobe again" modprobe mock-accel
check "fresh state: 4 PFs" "mock0 mock1 mock2 mock3" "$(list $cls)"
check "fresh state: no VFs" "0 0 0 0" "$(cat $cls/mock*/sriov_numvfs | tr '\n' ' ' | sed 's/ $//')"
check "fresh state: free" "0 0 0 0" "$(cat $cls/mock*/status | tr '\n' ' ' | sed 's/ $//')"
check_true "modprobe -r" modprobe -r mock-accel
finish
