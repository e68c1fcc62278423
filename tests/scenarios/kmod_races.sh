# The module's promises under asynchronous probing and races (issue 17):
# new_device and sriov_numvfs return with the devices there even when the
# kernel is asked to probe asynchronously (#5); a status write racing a
# probe sends its change uevent after the add (#4); unloading while
# new_device/del_device are written in a loop leaves nothing behind and no
# kernel problem (#2). Run with two vCPUs.
. /guest/lib.sh

# 5: async_probe=1 (the module loader's own parameter) must not make
# new_device or sriov_numvfs return before probe has run.
check_true "modprobe async_probe=1" modprobe mock-accel num_pfs=0 async_probe=1
missing=0
for i in $(seq 0 23); do
    echo "$i" > $bus/new_device
    [ -e $cls/mock$i/status ] || missing=$((missing + 1))
done
check "every PF bound when new_device returns" 0 "$missing"
echo 8 > $cls/mock0/sriov_numvfs
bound=0
for v in 0 1 2 3 4 5 6 7; do [ -e $cls/mock0_vf$v/status ] && bound=$((bound + 1)); done
check "every VF bound when sriov_numvfs returns" 8 "$bound"
check_true "modprobe -r" modprobe -r mock-accel

# 4: status writes racing the probe of a new PF: whenever a write of 1
# succeeded, the listener heard that change, after the add.
check_true "modprobe num_pfs=0" modprobe mock-accel num_pfs=0
uevents_start /tmp/race.uevents
for i in $(seq 0 39); do
    (until echo 1 > $cls/mock$i/status 2>/dev/null; do :; done) &
    writer=$!
    echo "$i" > $bus/new_device
    wait "$writer"
done
sleep 0.5
uevents_stop
lost=0
misordered=0
for i in $(seq 0 39); do
    add=$(grep -n "^add [^ ]*/mock-accel/mock$i " /tmp/race.uevents | head -1 | cut -d: -f1)
    change=$(grep -n "^change [^ ]*/mock-accel/mock$i .*MOCK_ACCEL_STATUS=1" /tmp/race.uevents | head -1 | cut -d: -f1)
    if [ -z "$change" ]; then
        lost=$((lost + 1))
    elif [ -z "$add" ] || [ "$change" -lt "$add" ]; then
        misordered=$((misordered + 1))
    fi
done
check "no status change lost while probe announced the device" 0 "$lost"
check "every status change after its device's add" 0 "$misordered"
check_true "modprobe -r" modprobe -r mock-accel

# 2: unload while new_device/del_device are written in a loop, ten times.
leftovers=0
for round in 1 2 3 4 5 6 7 8 9 10; do
    modprobe mock-accel num_pfs=2 || { not_ok "modprobe (round $round)"; break; }
    (while :; do
        echo 9 > $bus/new_device 2>/dev/null
        echo 9 > $bus/del_device 2>/dev/null
    done) &
    hammer=$!
    sleep 0.2
    modprobe -r mock-accel
    kill "$hammer"
    wait "$hammer" 2>/dev/null
    [ -e $bus ] && leftovers=$((leftovers + 1))
    [ -e $cls ] && leftovers=$((leftovers + 1))
    [ -e /sys/devices/mock-accel ] && leftovers=$((leftovers + 1))
done
check "nothing of the module left after unloads racing new_device" 0 "$leftovers"
check_true "it loads again" modprobe mock-accel
check "and works" "mock0 mock1 mock2 mock3" "$(list $cls)"
check_true "modprobe -r" modprobe -r mock-accel
finish
