#!/usr/bin/env bash
# Builds the sanitizing guest kernel (KASAN, lockdep, kmemleak, UBSAN,
# debugobjects, list debugging) from Debian's kernel source package, with the
# cut-down configuration beside this script (mock-debug.config), and links
# the result as target/debug-kernel:
#   target/debug-kernel/bzImage   the kernel QEMU boots
#   target/debug-kernel/build     its build tree (modules build with M=)
#   target/debug-kernel/release   its `uname -r`
#
# The build lives in the user's cache ($XDG_CACHE_HOME or ~/.cache, under
# mock-device/debug-kernel/<key>), keyed by the source package's version, the
# config, this script and the compiler, so a fresh clone reuses it and nothing
# is rebuilt until one of those changes. Progress is printed; a cold build
# takes about 6 minutes on 2 cores (measured: see tests/debug-kernel/README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
package=linux-source-6.12
tarball=/usr/src/linux-source-6.12.tar.xz
fragment=$here/mock-debug.config

version=$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || true)
[ -n "$version" ] && [ -f "$tarball" ] || {
    echo "debug-kernel: $package is not installed (./dev setup installs it)" >&2
    exit 1
}
key=$( (echo "$package $version"; gcc --version | head -n1; cat "$0" "$fragment") | sha256sum | cut -c1-16)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/mock-device/debug-kernel
dir=$cache/$key
link=$root/target/debug-kernel
mkdir -p "$cache" "$root/target"

# One build at a time (two test runs, or a test run and just kmod-sanitize).
exec 9>"$cache/lock"
flock 9

if [ -f "$dir/done" ]; then
    ln -sfn "$dir" "$link"
    echo "debug-kernel: up to date ($(cat "$dir/release"), $dir)"
    exit 0
fi

t0=$SECONDS
if [ ! -f "$dir/src/Makefile" ]; then
    echo "debug-kernel: unpacking $package $version"
    rm -rf "$dir"
    mkdir -p "$dir/src"
    tar -xJf "$tarball" -C "$dir/src" --strip-components=1
fi
src=$dir/src
out=$dir/build
mkdir -p "$out"

make -s -C "$src" O="$out" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$fragment" >/dev/null
make -s -C "$src" O="$out" olddefconfig >/dev/null

# Every option of the fragment must have survived olddefconfig.
missing=()
while IFS= read -r line; do
    case $line in
        CONFIG_*=*) grep -qxF "$line" "$out/.config" || missing+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$out/.config" || echo unset))") ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }
            opt=${opt%% *}
            ! grep -q "^$opt=" "$out/.config" || missing+=("$line (got: $(grep "^$opt=" "$out/.config"))")
            ;;
    esac
done <"$fragment"
if ((${#missing[@]})); then
    printf 'debug-kernel: option not applied: %s\n' "${missing[@]}" >&2
    exit 1
fi

# Progress: Kbuild prints one line per object it compiles.
echo "debug-kernel: building $package $version with $(nproc) jobs (about 1500 objects; a cold build takes about 6 minutes on 2 cores)"
# `modules` too: it writes Module.symvers, which out-of-tree modules link against.
set +e
make -C "$src" O="$out" -j"$(nproc)" bzImage modules 2>&1 | {
    n=0
    last=$SECONDS
    while IFS= read -r line; do
        case $line in
            "  CC "* | "  AS "* | "  LD "* | "  AR "* | "  HOSTCC "*)
                n=$((n + 1))
                if ((SECONDS - last >= 30)); then
                    echo "debug-kernel: $n objects built, $((SECONDS - t0)) s"
                    last=$SECONDS
                fi
                ;;
            # The kernel's own compiler warnings are not this project's to fix.
            *error:* | *Error* | *"***"*) echo "$line" ;;
        esac
    done
}
status=${PIPESTATUS[0]}
set -e
[ "$status" = 0 ] || { echo "debug-kernel: build failed (make exit $status)" >&2; exit 1; }

cp "$out/arch/x86/boot/bzImage" "$dir/bzImage"
make -s -C "$src" O="$out" kernelrelease >"$dir/release"
touch "$dir/done"
ln -sfn "$dir" "$link"
# Builds of older keys are of no further use (and 2 GB each).
for old in "$cache"/*/; do
    [ "${old%/}" = "$dir" ] || rm -rf "$old"
done
echo "debug-kernel: $(cat "$dir/release") built in $((SECONDS - t0)) s ($dir)"
