#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# Build everything the erb_io QEMU guest test needs, cached under
# $ERB_GUEST_CACHE (default /var/cache/erb-guest), keyed by package versions
# and source hashes:
#   tools-<key>/   a PRIVATE copy of Debian's kernel headers dir with the
#                  vmlinux extracted from /boot/vmlinuz-* and resolve_btfids
#                  built from linux-source's tools/bpf/resolve_btfids (so that
#                  the module gets a .BTF section; /usr/src stays untouched)
#   kmod-<key>/    erb_io.ko built from files/kmod in a DKMS-like tree
#   guest-<key>/   busybox initramfs: erb_io.ko, the kfunc test XDP object,
#                  erb_guest_runner, redis-server + redis-cli with their libs,
#                  and /init running tests/guest/guest-test.sh
#   sys-<key>/     initramfs that boots into this machine's own userland over
#                  9p (tests/guest/sys-init.sh), for the Ansible + XDP tests
# Prints KEY=VALUE lines (KERNEL, INITRD, KO, BPF_OBJ, KREL, KDIR, SYS_INITRD,
# RESOLVE_BTFIDS) and writes them
# to $ERB_GUEST_CACHE/current.env. Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${ERB_GUEST_CACHE:-/var/cache/erb-guest}
NICE=(nice -n 10)
PKGS=(linux-image-amd64 linux-headers-amd64 linux-source-6.1 dwarves
	qemu-system-x86 busybox-static redis-server redis-tools clang
	libbpf-dev libelf-dev zlib1g-dev gcc make bc flex bison cpio
	xz-utils zstd binutils kmod
	# the ssh server of the Molecule guest (extensions/molecule/qemu_guest): binaries only, no service
	dropbear-bin)

log() { echo "build-guest: $*" >&2; }

install_packages() {
	local missing=() p
	for p in "${PKGS[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
			grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "${missing[@]}" >&2
}

pkgver() { dpkg-query -W -f='${Version}' "$1"; }

hash_files() { cat "$@" | sha256sum | cut -c1-16; }

# pack_initrd ROOTDIR IMAGE: a gzipped newc cpio of ROOTDIR, written atomically
pack_initrd() {
	(cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2.tmp"
	mv "$2.tmp" "$2"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
install_packages

# The kernel the meta-package points to (what linux-image-amd64 installed).
KREL=$(dpkg-query -W -f='${Depends}' linux-image-amd64 |
	grep -o 'linux-image-[0-9][^ ,]*' | head -1 | sed 's/^linux-image-//')
[ -n "$KREL" ] || { log "cannot tell which kernel linux-image-amd64 installs"; exit 1; }
VMLINUZ=/boot/vmlinuz-$KREL
HDRS=/usr/src/linux-headers-$KREL
SRC_TAR=$(ls /usr/src/linux-source-6.1.tar.xz)
for f in "$VMLINUZ" "$HDRS/Makefile" "$SRC_TAR"; do
	[ -e "$f" ] || { log "missing $f"; exit 1; }
done

# ---- private kernel build dir with vmlinux + resolve_btfids ----
TKEY=$(echo "$KREL $(pkgver "linux-image-$KREL") $(pkgver "linux-headers-$KREL") \
	$(pkgver linux-source-6.1) $(pkgver dwarves)" | sha256sum | cut -c1-16)
TOOLS=$CACHE/tools-$TKEY
KDIR=$TOOLS/linux-headers-$KREL
if [ ! -e "$TOOLS/.done" ]; then
	log "preparing $TOOLS"
	rm -rf "$TOOLS"
	mkdir -p "$TOOLS/src"
	# resolve_btfids needs tools/, scripts/bpf_doc.py and the uapi headers
	"${NICE[@]}" tar -xf "$SRC_TAR" -C "$TOOLS/src" linux-source-6.1/tools \
		linux-source-6.1/scripts linux-source-6.1/include/uapi
	LS=$TOOLS/src/linux-source-6.1
	mkdir -p "$TOOLS/rbtf"
	"${NICE[@]}" make -s -C "$LS/tools/bpf/resolve_btfids" \
		O="$TOOLS/rbtf" >&2
	cp -a "$HDRS" "$KDIR"
	# Debian's relative symlinks point into /usr/lib/linux-kbuild-*: make
	# them absolute, and give the copy its own tools/ dir.
	rm -f "$KDIR/scripts" "$KDIR/tools"
	ln -s "$(readlink -f "$HDRS/scripts")" "$KDIR/scripts"
	mkdir -p "$KDIR/tools/bpf/resolve_btfids"
	cp -a "$(readlink -f "$HDRS/tools")/." "$KDIR/tools/"
	cp "$TOOLS/rbtf/resolve_btfids" "$KDIR/tools/bpf/resolve_btfids/"
	"$LS/scripts/extract-vmlinux" "$VMLINUZ" > "$KDIR/vmlinux"
	# (grep reads all: with pipefail, grep -q could SIGPIPE readelf)
	readelf -S "$KDIR/vmlinux" | grep -c '\.BTF' >/dev/null ||
		{ log "extracted vmlinux has no .BTF"; exit 1; }
	rm -rf "$TOOLS/src"
	touch "$TOOLS/.done"
fi

# ---- the module, in a DKMS-like tree (sources + shared headers) ----
KSRC=("$ROOT"/files/kmod/erb_io.c "$ROOT"/files/kmod/Kbuild
	"$ROOT"/files/kmod/Makefile "$ROOT"/files/kmod/dkms.conf
	"$ROOT"/files/bpf/erb.h "$ROOT"/files/bpf/erb_record.h)
MKEY=$(echo "$TKEY $(hash_files "${KSRC[@]}")" | sha256sum | cut -c1-16)
KMOD=$CACHE/kmod-$MKEY
if [ ! -e "$KMOD/erb_io.ko" ]; then
	log "building erb_io in $KMOD"
	rm -rf "$KMOD"
	mkdir -p "$KMOD"
	cp "${KSRC[@]}" "$KMOD/"
	"${NICE[@]}" make -C "$KDIR" M="$KMOD" modules >&2
	readelf -S "$KMOD/erb_io.ko" | grep -c '\.BTF' >/dev/null ||
		{ log "erb_io.ko has no .BTF section"; rm -f "$KMOD/erb_io.ko"; exit 1; }
fi

# ---- the guest initramfs ----
GSRC=("$ROOT"/tests/guest/build-guest.sh "$ROOT"/tests/guest/guest-test.sh
	"$ROOT"/tests/guest/erb_kfunc_test.bpf.c
	"$ROOT"/tests/guest/erb_guest_runner.c "$ROOT"/files/bpf/erb_record.h
	"$ROOT"/files/bpf/erb.h)
GKEY=$(echo "$MKEY $(hash_files "${GSRC[@]}") $(pkgver redis-server) \
	$(pkgver busybox-static) $(pkgver libbpf-dev) $(pkgver clang)" |
	sha256sum | cut -c1-16)
GUEST=$CACHE/guest-$GKEY
if [ ! -e "$GUEST/initrd.img" ]; then
	log "building guest in $GUEST"
	rm -rf "$GUEST"
	R=$GUEST/root
	mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,tmp,run,usr/bin,usr/sbin,erb}
	clang -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu \
		-I"$ROOT/files/bpf" -c "$ROOT/tests/guest/erb_kfunc_test.bpf.c" \
		-o "$R/erb/erb_kfunc_test.bpf.o"
	gcc -O2 -Wall -I"$ROOT/files/bpf" -o "$R/erb/erb_guest_runner" \
		"$ROOT/tests/guest/erb_guest_runner.c" -lbpf
	cp /bin/busybox "$R/bin/busybox"
	copy_bin() {
		local bin=$1 lib
		cp -L "$bin" "$R/usr/bin/" 2>/dev/null || true
		for lib in $(ldd "$bin" | awk '/=>/ {print $3} /^\t\// {print $1}'); do
			[ -e "$R$lib" ] || cp -L --parents "$lib" "$R"
		done
	}
	copy_bin /usr/bin/redis-server
	copy_bin /usr/bin/redis-cli
	copy_bin "$R/erb/erb_guest_runner"
	rm -f "$R/usr/bin/erb_guest_runner"
	cp "$KMOD/erb_io.ko" "$R/erb/"
	cp "$ROOT/tests/guest/guest-test.sh" "$R/erb/"
	echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
	echo 'root:x:0:' > "$R/etc/group"
	cat > "$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "ERB-V guest_boot_s $(cut -d' ' -f1 /proc/uptime)"
sh /erb/guest-test.sh
echo "ERB-V guest_done 1"
poweroff -f
EOF
	chmod +x "$R/init"
	pack_initrd "$R" "$GUEST/initrd.img"
	cp "$R/erb/erb_kfunc_test.bpf.o" "$GUEST/"
fi

# ---- the system guest: Debian's userland of this machine over 9p ----
# A tiny initramfs with the virtio/9p/overlay modules of the guest kernel; its
# /init (tests/guest/sys-init.sh) mounts this machine's / read-only through
# 9p, puts a tmpfs overlay on top and switch_roots into it, so the guest runs
# the real Python, Ansible (the repository's venv), redis and toolchain of
# this machine on Debian's kernel, and writes only to its own memory.
SKEY=$(echo "$KREL $(pkgver "linux-image-$KREL") $(pkgver busybox-static) \
	$(hash_files "$ROOT"/tests/guest/sys-init.sh "$ROOT"/tests/guest/build-guest.sh)" |
	sha256sum | cut -c1-16)
SYS=$CACHE/sys-$SKEY
if [ ! -e "$SYS/initrd.img" ]; then
	log "building the system guest initramfs in $SYS"
	rm -rf "$SYS"
	R=$SYS/root
	mkdir -p "$R"/{bin,proc,sys,dev,mods,host,up,newroot}
	cp /bin/busybox "$R/bin/busybox"
	for m in virtio_pci 9pnet_virtio 9p overlay; do
		modprobe -S "$KREL" --show-depends "$m"
	done | awk '$1 == "insmod" && !seen[$2]++ {print $2}' > "$SYS/mods.txt"
	[ -s "$SYS/mods.txt" ] || { log "cannot resolve the 9p modules of $KREL"; exit 1; }
	while read -r ko; do
		cp "$ko" "$R/mods/"
		basename "$ko" >> "$R/mods/order"
	done < "$SYS/mods.txt"
	cp "$ROOT/tests/guest/sys-init.sh" "$R/init"
	chmod +x "$R/init"
	pack_initrd "$R" "$SYS/initrd.img"
fi

cat > "$CACHE/current.env" <<EOF
KREL=$KREL
KERNEL=$VMLINUZ
INITRD=$GUEST/initrd.img
KO=$KMOD/erb_io.ko
KDIR=$KDIR
BPF_OBJ=$GUEST/erb_kfunc_test.bpf.o
SYS_INITRD=$SYS/initrd.img
RESOLVE_BTFIDS=$KDIR/tools/bpf/resolve_btfids/resolve_btfids
EOF
cat "$CACHE/current.env"
