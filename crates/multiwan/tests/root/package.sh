#!/usr/bin/env bash
# The Debian package's life on a fresh Debian 12 root: install, use, upgrade over itself,
# remove, purge — leaving nothing behind. Run by tests/package.rs as
#   package.sh BASE_ROOT DEB WORK_DIR
# Everything happens in private mount, PID and network namespaces: the root is an overlay on
# the cached BASE_ROOT (which stays as it was), its /proc is its own, and the maintainer
# scripts (which run `multiwan down` on removal) see only an empty network namespace.
set -euo pipefail
base=$1 deb=$2 work=$3
mkdir -p "$work/upper" "$work/ovl" "$work/root"
export base deb work
exec unshare --mount --propagation private --pid --net --fork bash -euo pipefail -c '
r=$work/root
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$r"
mount -t proc proc "$r/proc"
cp "$deb" "$r/tmp/multiwan.deb"
in_root() { chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
step() { echo "== $*"; }
# What the root holds, less what dpkg and its triggers keep for themselves.
tree() {
  (cd "$r" && find . -xdev \( -path ./proc -o -path ./tmp -o -path ./run -o -path ./var/lib/dpkg \
    -o -path ./var/log -o -path ./var/cache -o -path ./var/lib/systemd/deb-systemd-helper-enabled \) -prune \
    -o -printf "%p %m\n" | LC_ALL=C sort)
}
tree >"$work/before"

step install
in_root dpkg -i /tmp/multiwan.deb
in_root multiwan --version | tee "$work/version"
grep -q "^multiwan [0-9]" "$work/version"
for e in "$r"/usr/share/doc/multiwan/examples/*.toml; do
  in_root multiwan check -c "/usr/share/doc/multiwan/examples/${e##*/}"
done
test "$(in_root man -w multiwan)" = /usr/share/man/man8/multiwan.8.gz
in_root man multiwan 2>&1 | grep -q "multiwan"
test -d "$r/etc/multiwan"
test -z "$(ls -A "$r/etc/multiwan")"
test -f "$r/lib/systemd/system/multiwan.service"
test -f "$r/usr/share/bash-completion/completions/multiwan"
test -f "$r/usr/share/zsh/vendor-completions/_multiwan"
test -f "$r/usr/share/fish/vendor_completions.d/multiwan.fish"
in_root dpkg -s multiwan | grep "^Depends:" | tee "$work/depends"
grep -q "nftables" "$work/depends"
grep -q "iproute2" "$work/depends"
# The static musl build needs no shared library; the glibc fallback must depend on libc6.
if readelf -l "$r/usr/bin/multiwan" | grep -q "program interpreter"; then
  grep -q "libc6" "$work/depends"
  echo "depends ok: dynamically linked, libc6 listed"
else
  { ! grep -q "libc6" "$work/depends"; }
  readelf -d "$r/usr/bin/multiwan" | { ! grep -q NEEDED; }
  echo "depends ok: statically linked, no shared library"
fi
in_root dpkg -s multiwan | { ! grep -q "^Recommends:"; }

step "no live config: the daemon refuses to start and says why"
set +e
in_root multiwan run 2>"$work/run.err"
code=$?
set -e
cat "$work/run.err"
test "$code" = 2
grep -q "/etc/multiwan/multiwan.toml: cannot read config" "$work/run.err"
grep -q "/usr/share/doc/multiwan/examples/" "$work/run.err"

step "enable (offline, as an admin would before a reboot)"
in_root systemctl enable multiwan.service
test -L "$r/etc/systemd/system/multi-user.target.wants/multiwan.service"

step "upgrade over itself"
in_root dpkg -i /tmp/multiwan.deb
in_root multiwan --version
in_root dpkg -L multiwan >"$work/files"
test -s "$work/files"

step remove
in_root dpkg -r multiwan
test ! -e "$r/usr/bin/multiwan"
step purge
in_root dpkg --purge multiwan
left=""
while read -r p; do
  [ -e "$r$p" ] || [ -L "$r$p" ] || continue
  # Directories may be shared (/usr/bin; /lib is /usr/lib here): the whole-tree comparison
  # below finds any directory the package added and left.
  [ -d "$r$p" ] && continue
  left="$left $p"
done <"$work/files"
if [ -n "$left" ]; then echo "left behind by purge:$left"; exit 1; fi
tree >"$work/after"
if ! diff -u "$work/before" "$work/after"; then echo "the root changed across install and purge"; exit 1; fi
in_root dpkg -s multiwan >/dev/null 2>&1 && { echo "still known to dpkg"; exit 1; }
echo "package lifecycle ok"
'
