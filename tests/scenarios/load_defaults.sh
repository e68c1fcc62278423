# modprobe with the default parameters: 4 PFs on 2 NUMA nodes, 8 VFs each
# allowed, 16 GiB each; identity, attributes, char devices; modprobe -r
# removes everything; UUIDs are stable across reloads.
. /guest/lib.sh

check_true "modprobe mock-accel" modprobe mock-accel
check "lsmod lists mock_accel" mock_accel "$(lsmod | awk '$1 == "mock_accel" {print $1}')"
check "class devices" "mock0 mock1 mock2 mock3" "$(list $cls)"
check "bus devices" "0000:1a:00.0 0000:1b:00.0 0000:1c:00.0 0000:1d:00.0" "$(list $bus/devices)"
check "num_pfs parameter" 4 "$(cat /sys/module/mock_accel/parameters/num_pfs)"

i=0
for pci in 0000:1a:00.0 0000:1b:00.0 0000:1c:00.0 0000:1d:00.0; do
    d=$cls/mock$i
    check "mock$i device link" "$pci" "$(basename "$(readlink $d/device)")"
    check "mock$i numa_node" $((i % 2)) "$(cat $d/numa_node)"
    check "mock$i type" pf "$(cat $d/type)"
    check "mock$i memory_size" 17179869184 "$(cat $d/memory_size)"
    check "mock$i capabilities" compute,dma,sriov "$(cat $d/capabilities)"
    check "mock$i status" 0 "$(cat $d/status)"
    check "mock$i health" ok "$(cat $d/health)"
    check "mock$i fw_version" 1.4.2 "$(cat $d/fw_version)"
    check "mock$i sriov_totalvfs" 8 "$(cat $d/sriov_totalvfs)"
    check "mock$i sriov_numvfs" 0 "$(cat $d/sriov_numvfs)"
    check_true "mock$i uuid is a UUID" grep -Eq '^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' $d/uuid
    check "$pci vendor" 0x1b36 "$(cat $bus/devices/$pci/vendor)"
    check "$pci device id" 0x10f0 "$(cat $bus/devices/$pci/device)"
    check "$pci bound to mock-accel" mock-accel "$(basename "$(readlink $bus/devices/$pci/driver)")"
    check_true "/dev/mock-accel/mock$i is a char device" test -c /dev/mock-accel/mock$i
    set -- $(stat -c '%t %T' /dev/mock-accel/mock$i)
    check "mock$i char device major:minor" "$(cat $d/dev)" "$((0x$1)):$((0x$2))"
    ident=$(cat /dev/mock-accel/mock$i)
    check "mock$i read: name" "MOCK_ACCEL_DEVICE=mock$i" "$(echo "$ident" | grep DEVICE=)"
    check "mock$i read: uuid" "MOCK_ACCEL_UUID=$(cat $d/uuid)" "$(echo "$ident" | grep UUID=)"
    check "mock$i read: pci" "MOCK_ACCEL_PCI=$pci" "$(echo "$ident" | grep PCI=)"
    i=$((i + 1))
done
check "UUIDs are distinct" 4 "$(cat $cls/*/uuid | sort -u | wc -l)"
uuids=$(cat $cls/*/uuid)

check_true "modprobe -r mock-accel" modprobe -r mock-accel
check "lsmod no longer lists it" "" "$(lsmod | awk '$1 == "mock_accel"')"
check_false "class gone" test -e $cls
check_false "bus gone" test -e $bus
check_false "devices gone" test -e /sys/devices/mock-accel
check "char devices gone" "" "$(ls /dev/mock-accel 2>/dev/null)"
check "char region released" "" "$(grep mock-accel /proc/devices)"

check_true "modprobe again" modprobe mock-accel
check "UUIDs stable across reloads" "$uuids" "$(cat $cls/*/uuid)"
check_true "modprobe -r again" modprobe -r mock-accel
finish
