# The demo: load mock-accel in a real kernel, hot-plug devices, and show
# the sysfs tree and the uevents each step sends.
. /guest/lib.sh

step() { printf '\n== %s\n' "$*"; }
run() { echo "\$ $*"; sh -c "$*" || echo "   (failed with status $?)"; }

# One row per device: what /sys/class/mock-accel says.
table() {
    printf '%-10s %-4s %-13s %-4s %-9s %-9s %-8s %-5s %s\n' \
        DEVICE TYPE PCI NUMA MEMORY STATUS HEALTH VFS UUID
    for d in $cls/*; do
        [ -e "$d" ] || { echo "(no devices)"; return; }
        name=$(basename $d)
        if [ -e $d/sriov_numvfs ]; then vfs="$(cat $d/sriov_numvfs)/$(cat $d/sriov_totalvfs)"; else vfs=-; fi
        case $(cat $d/status) in 1) status=allocated ;; *) status=free ;; esac
        mem=$(awk '{ printf "%.1f GiB", $1 / 1073741824 }' $d/memory_size)
        printf '%-10s %-4s %-13s %-4s %-9s %-9s %-8s %-5s %s\n' "$name" "$(cat $d/type)" \
            "$(basename "$(readlink $d/device)")" "$(cat $d/numa_node)" "$mem" "$status" \
            "$(cat $d/health)" "$vfs" "$(cat $d/uuid)"
    done
}

# The uevents since the last call, one line each.
seen=0
events() {
    sleep 0.1
    total=$(wc -l </tmp/events)
    echo "uevents:"
    tail -n +$((seen + 1)) /tmp/events | awk '{
        n = split($2, p, "/"); what = p[n]; extra = ""
        for (i = 3; i <= NF; i++)
            if ($i ~ /^MOCK_ACCEL_(EVENT|NUMVFS|STATUS|HEALTH|TYPE|NUMA_NODE|PHYSFN)=/) {
                sub(/^MOCK_ACCEL_/, "", $i); extra = extra " " tolower($i)
            }
        kind = ($2 ~ /^\/module\//) ? "module" : (what ~ /^mock/) ? "class " : "bus   "
        printf "  %-7s %s %-14s%s\n", $1, kind, what, extra
    }'
    seen=$total
}

uevents_start /tmp/events
step "Load the module: 4 PFs on 2 NUMA nodes, 8 VFs each allowed (defaults)"
run modprobe mock-accel
events
table

step "Hot-plug PF 4 on NUMA node 1 (netdevsim-style bus attribute)"
run 'echo "4 1" > /sys/bus/mock-accel/new_device'
events
table

step "Enable 4 SR-IOV VFs on mock1 (PCI-core sriov_numvfs)"
run 'echo 4 > /sys/class/mock-accel/mock1/sriov_numvfs'
events
echo "sysfs tree of a VF:"
ls -l $cls/mock1_vf2/ | awk 'NR > 1 { $1 = $2 = $3 = $4 = $5 = $6 = $7 = $8 = ""; sub(/^ +/, ""); print "  " $0 }'
echo "its character device reads its identity:"
sed 's/^/  /' /dev/mock-accel/mock1_vf2
table

step "Allocate mock1_vf2, inject a fault into mock2"
run 'echo 1 > /sys/class/mock-accel/mock1_vf2/status'
run 'echo failed > /sys/class/mock-accel/mock2/health'
events
run 'echo 1 > /sys/class/mock-accel/mock2/status   # a failed device refuses allocation'
run 'echo 0 > /sys/class/mock-accel/mock1/sriov_numvfs   # refused: a VF is allocated'
table

step "Free the VF, disable VFs, unplug PF 4"
run 'echo 0 > /sys/class/mock-accel/mock1_vf2/status'
run 'echo 0 > /sys/class/mock-accel/mock1/sriov_numvfs'
run 'echo 4 > /sys/bus/mock-accel/del_device'
events
table

step "Unload"
run modprobe -r mock-accel
events
uevents_stop
ls $cls 2>/dev/null || echo "/sys/class/mock-accel is gone"
