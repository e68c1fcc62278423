# Helpers for guest scenarios (busybox sh): `. /guest/lib.sh`.
# Checks print TAP lines ("ok N - ...", "not ok N - ..."); the host test
# fails on any "not ok", a non-zero exit, or too few checks.

# The agents' Leases (heartbeat, leader) go to the test API server's
# `default` namespace (in a cluster the chart sets POD_NAMESPACE).
export POD_NAMESPACE=default

cls=/sys/class/mock-accel
bus=/sys/bus/mock-accel
_checks=0
_fails=0

ok() { _checks=$((_checks + 1)); echo "ok $_checks - $*"; }
not_ok() { _checks=$((_checks + 1)); _fails=$((_fails + 1)); echo "not ok $_checks - $*"; }

# check DESC EXPECTED ACTUAL
check() {
    if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1: expected '$2', got '$3'"; fi
}

# check_true DESC COMMAND...: the command succeeds
check_true() {
    _d=$1; shift
    if "$@"; then ok "$_d"; else not_ok "$_d: '$*' failed"; fi
}

# check_false DESC COMMAND...: the command fails
check_false() {
    _d=$1; shift
    if "$@"; then not_ok "$_d: '$*' succeeded"; else ok "$_d"; fi
}

# check_write DESC EXPECTED FILE VALUE: one write(2) of VALUE to FILE gives
# EXPECTED ("ok", or an errno name such as EINVAL)
check_write() {
    check "$1" "$2" "$(guest-tool write "$3" "$4")"
}

# put FILE VALUE: a write that must succeed (for setting up a check)
put() {
    _r=$(guest-tool write "$1" "$2")
    [ "$_r" = ok ] || not_ok "setup: writing '$2' to $1 gave $_r"
}

# list DIR: the sorted entry names of a directory, space separated
list() { ls "$1" 2>/dev/null | sort | tr '\n' ' ' | sed 's/ $//'; }

# allocated: the functions the module marks allocated (status 1), sorted
allocated() {
    for _f in $cls/*; do
        [ "$(cat $_f/status 2>/dev/null)" = 1 ] && basename $_f
    done | sort | tr '\n' ' ' | sed 's/ $//'
}

# cdi_specs: how many CDI specs /var/run/cdi holds
cdi_specs() { ls /var/run/cdi 2>/dev/null | grep -c '\.json$'; }

# uevents_start FILE: record mock-accel and module uevents into FILE
uevents_start() {
    rm -f /tmp/uevents.ready
    guest-tool uevents --subsystem mock-accel --module mock_accel --ready /tmp/uevents.ready >"$1" &
    _uev_pid=$!
    while [ ! -e /tmp/uevents.ready ]; do sleep 0.05; done
}

# uevents_stop: the listener drains what the kernel queued, then exits
uevents_stop() {
    kill "$_uev_pid"
    wait "$_uev_pid" 2>/dev/null
}

# wait_until SECONDS COMMAND...: runs COMMAND (a shell function too) until
# it succeeds, for at most SECONDS; fails if it never did. Give deadlines
# generous for software emulation on a loaded 2-core machine: a wait ends
# as soon as its condition holds, so only a failing run pays for them.
# WAIT_INTERVAL (seconds, default 0.05) spaces the tries of costly commands.
wait_until() {
    _wu_end=$(($(date +%s) + $1))
    shift
    until "$@"; do
        [ "$(date +%s)" -lt "$_wu_end" ] || return 1
        sleep "${WAIT_INTERVAL:-0.05}"
    done
}

# gone PID: the process has exited
gone() { ! kill -0 "$1" 2>/dev/null; }

# finish: summary line, and the exit status the host checks
finish() {
    echo "# $_checks checks, $_fails failed"
    [ "$_fails" -eq 0 ]
}
