# The owner of a PF (issue 35: many nodes on one kernel). Compare-and-set
# semantics, VFs following their PF, new_device with an owner, the uevents
# that name it, and the race: many writers for one unowned PF, one winner.
# Run with two vCPUs, so the race is real.
. /guest/lib.sh

check_true "modprobe num_pfs=8" modprobe mock-accel num_pfs=8
check "unowned at load" "" "$(cat $cls/mock0/owner)"

uevents_start /tmp/owner.uevents
check_write "node-a takes mock0" ok $cls/mock0/owner node-a
check_write "taking it again (a trailing newline) is a no-op" ok $cls/mock0/owner "node-a
"
check_write "node-b cannot take it" EBUSY $cls/mock0/owner node-b
check_write "node-b cannot give it back" EBUSY $cls/mock0/owner -node-b
check "still node-a's" node-a "$(cat $cls/mock0/owner)"
put $cls/mock0/sriov_numvfs 2
check "a VF follows its PF" "node-a node-a" "$(cat $cls/mock0_vf0/owner) $(cat $cls/mock0_vf1/owner)"
check_write "a VF's owner is read-only" EACCES $cls/mock0_vf1/owner node-b
check_write "node-a gives it back" ok $cls/mock0/owner -node-a
check "unowned again, VFs too" "  " "$(cat $cls/mock0/owner) $(cat $cls/mock0_vf1/owner) "
check_write "giving back an unowned PF is a no-op" ok $cls/mock0/owner -node-a
rep() { awk -v c="$1" -v n="$2" 'BEGIN { s = ""; for (i = 0; i < n; i++) s = s c; print s }'; }
name253=$(rep a 61).$(rep b 63).$(rep c 63).$(rep d 63)
check "a 253-character name is built" 253 "${#name253}"
check_write "a 253-character name is taken" ok $cls/mock1/owner "$name253"
check "and read back" "$name253" "$(cat $cls/mock1/owner)"
check_write "254 characters are not a node name" EINVAL $cls/mock2/owner "x$name253"
check_write "new_device with an owner" ok $bus/new_device "9 1 node-b"
check "owned from its first uevent on" node-b "$(cat $cls/mock9/owner)"
put $cls/mock9/sriov_numvfs 1
check "its VFs too" node-b "$(cat $cls/mock9_vf0/owner)"
check_write "new_device with a bad owner" EINVAL $bus/new_device "10 0 Node-B"
check "and nothing added" no "$([ -e $cls/mock10 ] && echo yes || echo no)"
# unbind and bind: the owner belongs to the device, not to the driver's view of it
echo 0000:23:00.0 > $bus/drivers/mock-accel/unbind
echo 0000:23:00.0 > $bus/drivers/mock-accel/bind
check "the owner is kept across unbind and bind" node-b "$(cat $cls/mock9/owner)"
uevents_stop

# The uevents: the owner change on the PF, with the previous owner; every
# class event of an owned function names it (add of a hot-plugged PF and
# of its VFs, before anything could see it unowned).
ev() { grep "^$1 [^ ]*/mock-accel/$2 " /tmp/owner.uevents; }
check "one owner change per effective write of mock0" 2 "$(ev change mock0 | grep -c MOCK_ACCEL_EVENT=owner)"
take=$(ev change mock0 | grep MOCK_ACCEL_EVENT=owner | head -1)
release=$(ev change mock0 | grep MOCK_ACCEL_EVENT=owner | tail -1)
prev() { echo "$1" | grep -o 'MOCK_ACCEL_PREVIOUS_OWNER=[^ ]*'; }
now() { echo "$1" | grep -o ' MOCK_ACCEL_OWNER=[^ ]*' | tr -d ' '; }
check "the take: previous none, now node-a" "MOCK_ACCEL_PREVIOUS_OWNER= MOCK_ACCEL_OWNER=node-a" "$(prev "$take") $(now "$take")"
check "the release: previous node-a, now none" "MOCK_ACCEL_PREVIOUS_OWNER=node-a " "$(prev "$release") $(now "$release")"
check "the hot-plugged PF's add names its owner" 1 "$(ev add mock9 | head -1 | grep -c MOCK_ACCEL_OWNER=node-b)"
check "its VF's add too" 1 "$(ev add mock9_vf0 | head -1 | grep -c MOCK_ACCEL_OWNER=node-b)"
check "and the re-bind's add" 2 "$(ev add mock9 | grep -c MOCK_ACCEL_OWNER=node-b)"
check "no event on refused or no-op writes (mock0: 2 owner changes, sriov)" 3 "$(ev change mock0 | wc -l)"

# The race: for each of PFs 2..7, eight writers (node-1..node-8) start
# together and try to take it; exactly one wins each, and the owner is the
# winner. Twenty rounds.
rounds=20
bad_winners=0
wrong_owner=0
for round in $(seq 1 $rounds); do
    rm -f /tmp/go /tmp/won
    for w in 1 2 3 4 5 6 7 8; do
        (
            until [ -e /tmp/go ]; do :; done
            for pf in 2 3 4 5 6 7; do
                echo "node-$w" 2>/dev/null > $cls/mock$pf/owner && echo "$pf node-$w" >> /tmp/won
            done
        ) &
    done
    touch /tmp/go
    wait
    for pf in 2 3 4 5 6 7; do
        winners=$(grep -c "^$pf " /tmp/won)
        [ "$winners" = 1 ] || { bad_winners=$((bad_winners + 1)); echo "# round $round mock$pf: $winners winners"; }
        owner=$(cat $cls/mock$pf/owner)
        [ "$(grep "^$pf " /tmp/won | cut -d' ' -f2)" = "$owner" ] || wrong_owner=$((wrong_owner + 1))
        echo "-$owner" > $cls/mock$pf/owner
    done
done
check "$rounds rounds x 6 PFs x 8 racing writers: one winner each" 0 "$bad_winners"
check "the owner is the winner" 0 "$wrong_owner"
check "all given back" "      " "$(for pf in 2 3 4 5 6 7; do printf '%s ' "$(cat $cls/mock$pf/owner)"; done)"

# A release racing a take by another node: either the release came first
# (the other node owns it) or the take failed (still unowned after).
inconsistent=0
for round in $(seq 1 $rounds); do
    echo node-a > $cls/mock3/owner
    rm -f /tmp/took
    (echo node-b 2>/dev/null > $cls/mock3/owner && echo took > /tmp/took) &
    echo -node-a > $cls/mock3/owner
    wait
    owner=$(cat $cls/mock3/owner)
    if [ -e /tmp/took ]; then
        [ "$owner" = node-b ] || inconsistent=$((inconsistent + 1))
    else
        [ -z "$owner" ] || inconsistent=$((inconsistent + 1))
    fi
    rm -f /tmp/took
    [ -n "$owner" ] && echo "-$owner" > $cls/mock3/owner
done
check "a release racing a take: the owner is the take's or none" 0 "$inconsistent"

check_true "modprobe -r" modprobe -r mock-accel
finish
