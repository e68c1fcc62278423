# Wrong writes to every writable file give the right errno and change
# nothing. (NL is a lone newline, what `echo "" >` writes: a zero-byte
# write never reaches the driver.) The host test then checks the kernel log for warnings, oopses
# and leak reports.
. /guest/lib.sh

modprobe mock-accel
long=$(printf '%0300d' 1)

# file                     value           errno
while read -r file value expected; do
    [ -z "$file" ] && continue
    [ "$value" = LONG ] && value=$long
    value=$(echo "$value" | tr '_' ' ')
    [ "$value" = NL ] && value="
"
    check_write "'$value' > $file" "$expected" "$file" "$value"
done <<TABLE
$bus/new_device            NL              EINVAL
$bus/new_device            abc             EINVAL
$bus/new_device            -1              EINVAL
$bus/new_device            64              ERANGE
$bus/new_device            4294967296      ERANGE
$bus/new_device            99999999999999999999  ERANGE
$bus/new_device            1_1_node-a_x    EINVAL
$bus/new_device            5_1_Node-A      EINVAL
$bus/new_device            5_1_-a          EINVAL
$bus/new_device            5_1_a..b        EINVAL
$bus/new_device            5_2_node-a      ERANGE
$bus/new_device            1_1_node-a      EEXIST
$bus/new_device            5_x             EINVAL
$bus/new_device            5_2             ERANGE
$bus/new_device            LONG            EINVAL
$bus/new_device            0               EEXIST
$bus/new_device            3_1             EEXIST
$bus/del_device            NL              EINVAL
$bus/del_device            abc             EINVAL
$bus/del_device            -3              EINVAL
$bus/del_device            9               ENODEV
$bus/del_device            64              ERANGE
$bus/del_device            1_2             EINVAL
$bus/fail_probe            abc             EINVAL
$bus/fail_probe            -1              EINVAL
$bus/fail_probe            999999          ERANGE
$cls/mock0/status          2               ERANGE
$cls/mock0/status          abc             EINVAL
$cls/mock0/status          -1              EINVAL
$cls/mock0/status          NL              EINVAL
$cls/mock0/status          1x              EINVAL
$cls/mock0/status          4294967296      ERANGE
$cls/mock0/health          broken          EINVAL
$cls/mock0/health          NL              EINVAL
$cls/mock0/health          OK              EINVAL
$cls/mock0/health          ok_ok           EINVAL
$cls/mock0/owner           NL              EINVAL
$cls/mock0/owner           -               EINVAL
$cls/mock0/owner           Node-A          EINVAL
$cls/mock0/owner           node_a          EINVAL
$cls/mock0/owner           .a              EINVAL
$cls/mock0/owner           a.              EINVAL
$cls/mock0/owner           a-.b            EINVAL
$cls/mock0/owner           --a             EINVAL
$cls/mock0/owner           LONG            EINVAL
$cls/mock0/sriov_numvfs    9               ERANGE
$cls/mock0/sriov_numvfs    -1              EINVAL
$cls/mock0/sriov_numvfs    abc             EINVAL
$cls/mock0/sriov_numvfs    4294967295      ERANGE
$cls/mock0/sriov_numvfs    4294967296      ERANGE
$cls/mock0/uuid            x               EACCES
$cls/mock0/memory_size     1               EACCES
$cls/mock0/sriov_totalvfs  64              EACCES
TABLE

check "still four PFs" "mock0 mock1 mock2 mock3" "$(list $cls)"
check "mock0 untouched: status" 0 "$(cat $cls/mock0/status)"
check "mock0 untouched: health" ok "$(cat $cls/mock0/health)"
check "mock0 untouched: VFs" 0 "$(cat $cls/mock0/sriov_numvfs)"
check "mock0 untouched: owner" "" "$(cat $cls/mock0/owner)"
check "no probe failure armed" 0 "$(cat $bus/fail_probe)"

# PCI-core sriov_numvfs rules
check_write "enable 2 VFs" ok $cls/mock0/sriov_numvfs 2
check_write "2 again is a no-op" ok $cls/mock0/sriov_numvfs 2
check_write "2 -> 3 needs 0 first" EBUSY $cls/mock0/sriov_numvfs 3
check "still 2 VFs" 2 "$(cat $cls/mock0/sriov_numvfs)"
check_write "VF status garbage" EINVAL $cls/mock0_vf1/status 7x
check_write "VF health garbage" EINVAL $cls/mock0_vf1/health dead
check_write "0 disables" ok $cls/mock0/sriov_numvfs 0
check_write "then 3 works" ok $cls/mock0/sriov_numvfs 3
check_write "a newline-terminated value is fine" ok $cls/mock0/health "degraded
"

# writes racing with removal: a file kept open across del_device
exec 3>$cls/mock2/status
check_write "del_device 2" ok $bus/del_device 2
echo 1 >&3 2>/dev/null
check "a write to a removed device fails cleanly" 1 "$?"
exec 3>&-

check_true "modprobe -r" modprobe -r mock-accel
finish
