# modprobe with custom parameters, and parameters out of range refused.
. /guest/lib.sh

check_true "modprobe with parameters" modprobe mock-accel num_pfs=6 numa_nodes=3 max_vfs=16 memory_mib=4096
check "six PFs" "mock0 mock1 mock2 mock3 mock4 mock5" "$(list $cls)"
for i in 0 1 2 3 4 5; do
    check "mock$i numa_node" $((i % 3)) "$(cat $cls/mock$i/numa_node)"
    check "mock$i sriov_totalvfs" 16 "$(cat $cls/mock$i/sriov_totalvfs)"
    check "mock$i memory_size" 4294967296 "$(cat $cls/mock$i/memory_size)"
done
check "mock5 PCI address" 0000:1f:00.0 "$(basename "$(readlink $cls/mock5/device)")"

check_write "enable all 16 VFs of mock5" ok $cls/mock5/sriov_numvfs 16
check "16 VFs" 16 "$(ls -d $cls/mock5_vf* | wc -l)"
check "VF 15 PCI address (devfn 16)" 0000:1f:02.0 "$(basename "$(readlink $cls/mock5_vf15/device)")"
check "VF memory is an equal share" 268435456 "$(cat $cls/mock5_vf15/memory_size)"
check "VF NUMA node is its PF's" 2 "$(cat $cls/mock5_vf15/numa_node)"
check "VF capabilities" compute,dma "$(cat $cls/mock5_vf15/capabilities)"
check "VF has no sriov_numvfs" "" "$(ls $cls/mock5_vf0 | grep sriov)"
check "VF device id" 0x10f1 "$(cat $bus/devices/0000:1f:02.0/device)"
check_true "modprobe -r with 16 VFs enabled" modprobe -r mock-accel

for bad in num_pfs=65 numa_nodes=0 numa_nodes=9 max_vfs=65 memory_mib=0 memory_mib=1048577 fabric_attach_ms=60001; do
    check_false "modprobe $bad is refused" modprobe mock-accel $bad
    check_false "nothing left after $bad" test -e $cls
done

check_true "modprobe num_pfs=0" modprobe mock-accel num_pfs=0
check "no devices" "" "$(list $cls)"
check_write "new_device still works" ok $bus/new_device 0
check "one PF" mock0 "$(list $cls)"
check_true "modprobe -r" modprobe -r mock-accel

modprobe mock-accel uuid_seed=42
seeded=$(cat $cls/mock0/uuid)
modprobe -r mock-accel
modprobe mock-accel
unseeded=$(cat $cls/mock0/uuid)
modprobe -r mock-accel
modprobe mock-accel uuid_seed=42
check "uuid_seed gives the same UUIDs again" "$seeded" "$(cat $cls/mock0/uuid)"
check_false "another seed gives other UUIDs" test "$seeded" = "$unseeded"
modprobe -r mock-accel
finish
