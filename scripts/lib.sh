# SPDX-License-Identifier: GPL-3.0-or-later
# shellcheck shell=bash
# Set-up shared by scripts/demo and scripts/test: Debian packages, the Python venv,
# the BPF objects, the collection path. Every step is idempotent and quick when done.
set -euo pipefail

ERB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ERB_VENV=${ERB_VENV:-$ERB_REPO/.venv}

# Debian packages the collection, the local fleet and the test suite use.
ERB_APT_PACKAGES=(
	# BPF toolchain: clang, libbpf headers (bpf_helpers.h), asm/types.h, bpftool, libbpf.so.1
	clang llvm libbpf-dev libbpf1 linux-libc-dev bpftool make gcc
	# the I/O agent (files/agent): hiredis
	libhiredis-dev pkg-config
	# erb.booster.kmod's dkms method (tests/modules/test_kmod_module.py builds with it)
	dkms
	# Redis: redis-server, redis-cli, redis-benchmark
	redis-server redis-tools
	# namespaces, veth, offloads, mountpoint
	iproute2 ethtool util-linux procps
	# the Python that Ansible modules run with on the (local) hosts, and venv for the controller
	python3 python3-venv
	# ansible-test sanity's shellcheck test (tests/sanity)
	shellcheck
)

say() { printf '\n==> %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

erb_need_root() {
	[ "$(id -u)" -eq 0 ] || die "run as root: it installs packages, makes network namespaces and loads BPF"
}

erb_apt() {
	local missing=() p
	for p in "${ERB_APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ "${#missing[@]}" -eq 0 ]; then
		say "Debian packages: all present"
		return 0
	fi
	say "Debian packages: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# erb_venv REQUIREMENTS_FILE: the controller's venv with those requirements
erb_venv() {
	local req=$1 stamp sum
	if [ ! -x "$ERB_VENV/bin/python" ]; then
		say "Python venv: creating $ERB_VENV"
		python3 -m venv "$ERB_VENV"
	fi
	stamp="$ERB_VENV/.erb-requirements"
	sum=$(cat "$ERB_REPO/$req" "$ERB_REPO"/requirements*.txt | sha256sum | cut -d' ' -f1)
	sum="$req $sum"
	if [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
		say "Python venv: $req already installed"
		return 0
	fi
	say "Python venv: installing $req"
	"$ERB_VENV/bin/python" -m pip install -q --upgrade pip
	"$ERB_VENV/bin/python" -m pip install -q -r "$ERB_REPO/$req"
	echo "$sum" >"$stamp"
}

erb_build() {
	say "BPF objects: make -C files/bpf"
	make -C "$ERB_REPO/files/bpf"
}

# ansible.cfg's collections_path finds erb.booster through this symlink
erb_collection_link() {
	local d="$ERB_REPO/.ansible/collections/ansible_collections/erb"
	mkdir -p "$d"
	[ "$(readlink "$d/booster" 2>/dev/null)" = ../../../.. ] || ln -sfn ../../../.. "$d/booster"
}

erb_setup() {
	erb_need_root
	erb_apt
	erb_venv "$1"
	erb_build
	erb_collection_link
	export PATH="$ERB_VENV/bin:$PATH"
	export ANSIBLE_CONFIG="$ERB_REPO/ansible.cfg"
}
