#!/usr/bin/env bash
# multiwan's unit under a real systemd: systemd 252 boots as PID 1 of a container
# (systemd-nspawn: private PID, mount, IPC and UTS namespaces) whose root is an overlay on
# the cached Debian root with the package installed, and whose network namespace is the
# lab's router. Run by tests/systemd.rs as
#   systemd.sh BASE_ROOT DEB WORK_DIR NETNS CONFIG
# The container's cgroups live under a cgroup of this run's own, removed at the end.
set -euo pipefail
base=$1 deb=$2 work=$3 netns=$4 config=$5
mkdir -p "$work/upper" "$work/ovl" "$work/root"
export base deb work netns config HOLD
exec unshare --mount --propagation private bash -euo pipefail -c '
r=$work/root
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$r"
cp "$deb" "$r/tmp/multiwan.deb"
unshare --pid --fork --mount-proc="$r/proc" chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg -i /tmp/multiwan.deb >/dev/null
install -m 0644 "$config" "$r/etc/multiwan/multiwan.toml"
chroot "$r" systemctl enable multiwan.service 2>/dev/null
step() { echo "== $*"; }
fail() { echo "FAILED: $*"; exit 1; }

cg=mwtest-$$-$RANDOM
for h in systemd unified; do
  mkdir "/sys/fs/cgroup/$h/$cg"
  echo $$ >"/sys/fs/cgroup/$h/$cg/cgroup.procs"
done
nspawn=
cleanup() {
  set +e
  # Nothing in the container is worth a clean shutdown: its root is thrown away.
  if [ -n "$nspawn" ]; then
    kill -KILL "$nspawn" 2>/dev/null
    wait "$nspawn" 2>/dev/null
  fi
  for h in systemd unified; do
    echo $$ >"/sys/fs/cgroup/$h/cgroup.procs"
  done
  # Kill whatever the container left in its cgroups (its PID 1 among them), then remove the
  # cgroups, deepest first, once they are empty.
  for _ in $(seq 50); do
    left=$(find /sys/fs/cgroup/systemd/$cg /sys/fs/cgroup/unified/$cg -name cgroup.procs -exec cat {} + 2>/dev/null)
    [ -z "$left" ] && break
    kill -KILL $left 2>/dev/null
    sleep 0.1
  done
  for h in systemd unified; do
    find "/sys/fs/cgroup/$h/$cg" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "/sys/fs/cgroup/$h/$cg" ] && echo "cgroup /sys/fs/cgroup/$h/$cg left behind" >&2
  done
}
trap cleanup EXIT

# A container joined to an existing network namespace is not "private network" to nspawn: it
# would drop CAP_NET_ADMIN and mount /proc/sys/net read-only. That namespace is the test'"'"'s
# own, so the container gets both, as on a real router.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_NSPAWN_API_VFS_WRITABLE=network \
  systemd-nspawn --quiet -D "$r" --register=no --keep-unit --capability=CAP_NET_ADMIN \
  --network-namespace-path="/run/netns/$netns" --boot >"$work/console.log" 2>&1 </dev/null &
nspawn=$!
pid1=
for _ in $(seq 300); do
  # The container PID 1 is systemd-nspawn'"'"'s child; its innermost pid is 1.
  for p in $(pgrep -P "$nspawn"); do
    if [ "$(awk "/^NSpid/ {print \$NF}" "/proc/$p/status")" = 1 ]; then
      pid1=$p
    fi
  done
  [ -n "$pid1" ] && break
  kill -0 "$nspawn" 2>/dev/null || { cat "$work/console.log"; fail "systemd-nspawn exited"; }
  sleep 0.1
done
[ -n "$pid1" ] || fail "no systemd in the container"
in_ct() { nsenter -t "$pid1" -m -u -i -p -r -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
ctl() { in_ct systemctl "$@"; }
prop() { ctl show -P "$2" "$1"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  ctl status multiwan --no-pager -n 0 || true
  in_ct journalctl -u multiwan --no-pager -n 40 -o cat || true
  fail "timed out after ${limit}s waiting for $what"
}
journal_has() { in_ct journalctl -u multiwan --no-pager -o cat | grep -qF "$1"; }
active() { [ "$(prop multiwan ActiveState)" = active ]; }
table() { ip netns exec "$netns" nft list table inet multiwan >/dev/null 2>&1; }

# HOLD=SECONDS: keep the booted container that long for a person to look at (nsenter -t PID1).
if [ -n "${HOLD:-}" ]; then echo "pid1 $pid1"; sleep "$HOLD"; exit 0; fi
step "boot: systemd as the container PID 1, multiwan enabled"
wait_for 120 "the system to finish booting" sh -c "s=\$(nsenter -t $pid1 -m -p -r -w systemctl is-system-running); [ \"\$s\" = running ] || [ \"\$s\" = degraded ]"
wait_for 30 "multiwan to be active (READY=1)" active
test "$(prop multiwan Type)" = notify || fail "not Type=notify"
test "$(prop multiwan WatchdogUSec)" = 10s || fail "watchdog not 10s"
table || fail "no nft table after start"
echo "started: MainPID $(prop multiwan MainPID)"

step "journald fields: a link that goes down and comes back"
ip -n "$netns" link set wan1 down
wait_for 30 "isp1 down in the journal" journal_has "uplink down"
ip -n "$netns" link set wan1 up
wait_for 30 "isp1 up again in the journal" journal_has "uplink up"
in_ct journalctl -u multiwan --no-pager -o json >"$work/journal.json"
for field in UPLINK STATE REASON FROM TO; do
  grep -q "\"$field\":" "$work/journal.json" || fail "no $field= field in the journal"
done
grep -q "\"UPLINK\":\"isp1\"" "$work/journal.json" || fail "no UPLINK=isp1"
in_ct journalctl -u multiwan --no-pager -o verbose UPLINK=isp2 | grep -m1 -E "^ +(REASON|STATE)=" || fail "cannot select by UPLINK="

step reload
pid=$(prop multiwan MainPID)
ctl reload multiwan
wait_for 20 "the reload to finish" journal_has "configuration reloaded"
test "$(prop multiwan MainPID)" = "$pid" || fail "reload restarted the daemon"
step "reload with a broken config: refused, the daemon keeps running"
cp "$r/etc/multiwan/multiwan.toml" "$work/good.toml"
printf "[lan]\ninterfaces = 3\n" >"$r/etc/multiwan/multiwan.toml"
if ctl reload multiwan 2>"$work/reload.err"; then fail "systemctl reload accepted a broken config"; fi
cat "$work/reload.err"
in_ct journalctl -u multiwan --no-pager -o cat | grep -q "multiwan.toml:2:" || fail "the error has no file:line"
active || fail "the daemon died on a bad reload"
test "$(prop multiwan MainPID)" = "$pid" || fail "a bad reload restarted the daemon"
cp "$work/good.toml" "$r/etc/multiwan/multiwan.toml"

step "kill -9: systemd restarts it, the data plane stays"
ctl kill -s KILL multiwan
wait_for 30 "a new daemon" sh -c "p=\$(nsenter -t $pid1 -m -p -r -w systemctl show -P MainPID multiwan); [ \"\$p\" != 0 ] && [ \"\$p\" != $pid ] && [ \"\$(nsenter -t $pid1 -m -p -r -w systemctl show -P ActiveState multiwan)\" = active ]"
test "$(prop multiwan NRestarts)" = 1 || fail "NRestarts is $(prop multiwan NRestarts)"
table || fail "the table went away"

step "watchdog: a stuck prober stops the pings; systemd kills and restarts the daemon"
mkdir -p "$r/etc/systemd/system/multiwan.service.d"
# LimitCORE=0: the SIGABRT of the watchdog must not write a core dump anywhere.
# WatchdogSec=1 (pings every 0.5 s): the daemon stops pinging about 1 s after the prober
# stalls and would exit by itself after 3 s (supervise.rs MIN_STALL); systemd must act first.
printf "[Service]\nEnvironment=MULTIWAN_FAULT=prober-hang\nWatchdogSec=1\nLimitCORE=0\n" \
  >"$r/etc/systemd/system/multiwan.service.d/fault.conf"
ctl daemon-reload
ctl restart multiwan
wait_for 60 "a watchdog timeout" journal_has "Watchdog timeout"
in_ct journalctl -u multiwan --no-pager -o cat | grep -F "Watchdog timeout" | head -2
wait_for 30 "the restart after the watchdog" sh -c "[ \$(nsenter -t $pid1 -m -p -r -w systemctl show -P NRestarts multiwan) -ge 2 ]"
rm "$r/etc/systemd/system/multiwan.service.d/fault.conf"
ctl daemon-reload
ctl reset-failed multiwan || true
ctl restart multiwan
wait_for 30 "multiwan active again" active

step "a broken config at start: one failed start (exit 2), no restart loop"
ctl stop multiwan
cp "$r/etc/multiwan/multiwan.toml" "$work/good.toml"
printf "[lan]\ninterfaces = 3\n" >"$r/etc/multiwan/multiwan.toml"
errors() { in_ct journalctl -u multiwan --no-pager -o cat | grep -c "multiwan.toml:2:" || true; }
before=$(errors)
if ctl start multiwan; then fail "a broken config started"; fi
# RestartSec=1: a loop would have restarted it (and logged the error) several times by now.
sleep 4
test "$(prop multiwan ActiveState)" = failed || fail "not failed after a broken start: $(prop multiwan ActiveState)"
test "$(errors)" = $((before + 1)) || fail "the broken config was started $(( $(errors) - before )) times"
cp "$work/good.toml" "$r/etc/multiwan/multiwan.toml"
ctl reset-failed multiwan || true
ctl start multiwan
wait_for 30 "multiwan active again" active

step "stop: fail-static"
ctl stop multiwan
test "$(prop multiwan ActiveState)" = inactive || fail "not inactive: $(prop multiwan ActiveState)"
table || fail "stop removed the data plane"
# journald takes the ExecStopPost line from a stream: it may land a moment after stop returns.
wait_for 10 "the ExecStopPost message" journal_has "the data plane stays in place (fail-static)"
in_ct journalctl -u multiwan --no-pager -o cat | grep -F "multiwan stopped" | tail -1
echo "systemd lifecycle ok"
'
