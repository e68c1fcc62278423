# Fabric-attached functions (fabric_attach_ms): an attach takes that long,
# may fail (fail_attach), and gates allocation; every state change sends a
# change uevent; unbind and unload with attaches pending are clean. The
# host test checks the kernel log too.
. /guest/lib.sh

modprobe mock-accel num_pfs=2
check "a local function says so" local "$(cat $cls/mock0/attach)"
check_write "a local function cannot attach" EOPNOTSUPP $cls/mock0/attach attach
check_write "nor arm attach failures" EOPNOTSUPP $cls/mock0/fail_attach 1
check_write "a local function allocates" ok $cls/mock0/status 1
put $cls/mock0/status 0
modprobe -r mock-accel

modprobe mock-accel num_pfs=2 fabric_attach_ms=2000
check "fabric_attach_ms is shown" 2000 "$(cat /sys/module/mock_accel/parameters/fabric_attach_ms)"
check "a fabric function starts detached" detached "$(cat $cls/mock0/attach)"
check_write "a detached function cannot be allocated" ENOLINK $cls/mock0/status 1
check_write "garbage" EINVAL $cls/mock0/attach plug
check_write "fail_attach garbage" EINVAL $cls/mock0/fail_attach x
check_write "fail_attach above 1000" ERANGE $cls/mock0/fail_attach 1001
put $cls/mock0/sriov_numvfs 2
check "its VFs are fabric-attached too" detached "$(cat $cls/mock0_vf1/attach)"

uevents_start /tmp/fabric.uevents
check_write "attach" ok $cls/mock0/attach attach
check "attaching at once" attaching "$(cat $cls/mock0/attach)"
check_write "attach again while attaching is a no-op" ok $cls/mock0/attach attach
check_write "allocating while attaching" ENOLINK $cls/mock0/status 1
attached() { [ "$(cat $cls/$1/attach)" = "$2" ]; }
check_true "attached after fabric_attach_ms" wait_until 10 attached mock0 attached
check_write "an attached function allocates" ok $cls/mock0/status 1
check_write "an allocated function cannot detach" EBUSY $cls/mock0/attach detach
put $cls/mock0/status 0
check_write "detach" ok $cls/mock0/attach "detach
"
check "detached" detached "$(cat $cls/mock0/attach)"

check_write "arm one attach failure on a VF" ok $cls/mock0_vf1/fail_attach 1
check "armed" 1 "$(cat $cls/mock0_vf1/fail_attach)"
put $cls/mock0_vf1/attach attach
check_true "the attach fails" wait_until 10 attached mock0_vf1 failed
check "consumed" 0 "$(cat $cls/mock0_vf1/fail_attach)"
check_write "a failed attach does not allocate" ENOLINK $cls/mock0_vf1/status 1
put $cls/mock0_vf1/attach attach
check_true "attaching again succeeds" wait_until 10 attached mock0_vf1 attached

put $cls/mock1/health failed
put $cls/mock1/attach attach
check_true "a failed function does not attach" wait_until 10 attached mock1 failed
put $cls/mock1/health ok

put $cls/mock0/attach attach
put $cls/mock0/attach detach
sleep 2.5
check "a detach cancels a pending attach" detached "$(cat $cls/mock0/attach)"
uevents_stop
states=$(grep -o 'MOCK_ACCEL_ATTACH=[a-z]*' /tmp/fabric.uevents | tr '\n' ' ')
check "uevents in order" "MOCK_ACCEL_ATTACH=attaching MOCK_ACCEL_ATTACH=attached MOCK_ACCEL_ATTACH=detached MOCK_ACCEL_ATTACH=attaching MOCK_ACCEL_ATTACH=failed MOCK_ACCEL_ATTACH=attaching MOCK_ACCEL_ATTACH=attached MOCK_ACCEL_ATTACH=attaching MOCK_ACCEL_ATTACH=failed MOCK_ACCEL_ATTACH=attaching MOCK_ACCEL_ATTACH=detached " "$states"

# Attaches pending across unbind, VF removal and unload.
put $cls/mock1/attach attach
put $cls/mock0/attach attach
put $cls/mock0_vf0/attach attach
echo 0000:1b:00.0 > $bus/drivers/mock-accel/unbind
echo 0000:1b:00.0 > $bus/drivers/mock-accel/bind
check "a rebound function is detached" detached "$(cat $cls/mock1/attach)"
put $cls/mock0/sriov_numvfs 0
put $cls/mock1/attach attach
check_true "modprobe -r with attaches pending" modprobe -r mock-accel
sleep 0.5
finish
