#!/usr/bin/env bash
# tests/package/test_package.sh — the Debian package and `make install` from a clean tree.
# Copies only the files git tracks (so an untracked or ignored file cannot stand in for one
# that was never committed), runs `make deb` there, checks the package with lintian (0 errors)
# and its contents and maintainer scripts, then runs `make install DESTDIR=...` with the
# default paths in the package's build tree (built once, for both) and checks what it wrote.
# Usage: test_package.sh (from anywhere inside the repository).
set -u
cd "$(dirname "$0")/../.."
VERSION=$(sed -n 's/^VERSION := //p' Makefile)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { if [ "$1" = 0 ]; then ok; else bad "$2"; return 1; fi; } # check STATUS NAME

# 1. the clean tree: tracked files as they are in the work tree (edits included)
src=$tmp/src
mkdir -p "$src"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        echo "FAIL: not a git checkout: cannot tell tracked files from the rest" >&2
        exit 1
fi
git ls-files -z | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -xf - -C "$src"
for f in systemd/sysusers.d/mixd.conf systemd/tmpfiles.d/mixd.conf; do
        [ -f "$src/$f" ]; check $? "$f is not tracked by git"
done

# 2. make deb (one -O2 build with Debian's hardening flags), kept for `make install` below
jobs=$(nproc 2>/dev/null || echo 1); [ "$jobs" -gt 2 ] && jobs=2
if ! make -C "$src" deb DEB_KEEP_TREE=1 DEB_BUILD_OPTIONS="parallel=$jobs" >"$tmp/deb.log" 2>&1; then
        bad "make deb from a clean tree"
        tail -n 30 "$tmp/deb.log"
        echo "$pass passed, $fail failed"
        exit 1
fi
ok
deb=$(ls "$src"/build/deb/mixd_"$VERSION"-*_*.deb 2>/dev/null | grep -v dbgsym | head -n 1)
changes=$(ls "$src"/build/deb/mixd_"$VERSION"-*.changes 2>/dev/null | head -n 1)
[ -n "$deb" ] && [ -n "$changes" ]; check $? "make deb wrote a .deb and a .changes"

# 3. lintian on the .changes (it checks every package the build made): no error
lintian --fail-on none "$changes" >"$tmp/lintian" 2>&1
errors=$(grep -c '^E: ' "$tmp/lintian")
warnings=$(grep -c '^W: ' "$tmp/lintian")
[ "$errors" = 0 ]; check $? "lintian: $errors error(s)"
grep '^[EW]: ' "$tmp/lintian" | sed 's/^/    lintian: /'

# 4. what the package holds, and what its maintainer scripts do with it
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|; s|/$||' >"$tmp/deb.files"
for f in /usr/bin/mixd /usr/bin/mixctl /lib/systemd/system/mixd.service /lib/systemd/system/mixd.socket \
         /usr/lib/sysusers.d/mixd.conf /usr/lib/tmpfiles.d/mixd.conf /etc/mixd/mixd.conf \
         /usr/share/man/man1/mixctl.1.gz /usr/share/man/man5/mixd.conf.5.gz /usr/share/man/man8/mixd.8.gz \
         /usr/share/bash-completion/completions/mixctl; do
        grep -qx -- "$f" "$tmp/deb.files"; check $? "package lacks $f"
done
dpkg-deb -e "$deb" "$tmp/control"
grep -qx /etc/mixd/mixd.conf "$tmp/control/conffiles"; check $? "/etc/mixd/mixd.conf is a conffile"
grep -q 'systemd-sysusers.*mixd.conf' "$tmp/control/postinst"; check $? "postinst creates the mixd user (systemd-sysusers)"
grep -q 'systemd-tmpfiles.*mixd.conf' "$tmp/control/postinst"; check $? "postinst creates /var/lib/mixd (systemd-tmpfiles)"
grep -q 'mixd.socket' "$tmp/control/postinst"; check $? "postinst enables mixd.socket"

# 5. make install DESTDIR=... with the default paths, from the package's (clean) build tree
root=$tmp/root
make -C "$src/build/deb/mixd-$VERSION" MODE=rel install DESTDIR="$root" >"$tmp/install.log" 2>&1
check $? "make install DESTDIR (default paths)" || tail -n 20 "$tmp/install.log"
for f in usr/bin/mixd usr/bin/mixctl usr/lib/systemd/system/mixd.service usr/lib/systemd/system/mixd.socket \
         usr/lib/sysusers.d/mixd.conf usr/lib/tmpfiles.d/mixd.conf etc/mixd/mixd.conf \
         usr/share/man/man1/mixctl.1 usr/share/man/man5/mixd.conf.5 usr/share/man/man8/mixd.8 \
         usr/share/bash-completion/completions/mixctl; do
        [ -f "$root/$f" ]; check $? "make install did not write /$f"
done
grep -qx 'ExecStart=/usr/bin/mixd --config /etc/mixd/mixd.conf' "$root/usr/lib/systemd/system/mixd.service"
check $? "installed mixd.service runs /usr/bin/mixd"
"$root/usr/bin/mixctl" --help >/dev/null 2>&1; check $? "installed mixctl runs"

# 6. the sysusers.d and tmpfiles.d entries do what docs/SERVICE.md says, applied to the staging root
if command -v systemd-sysusers >/dev/null 2>&1; then
        mkdir -p "$root/etc"
        : >"$root/etc/passwd"; : >"$root/etc/group"
        systemd-sysusers --root="$root" >"$tmp/sysusers" 2>&1
        check $? "systemd-sysusers accepts mixd.conf"
        grep -Eq '^mixd:x:[0-9]+:[0-9]+:[^:]*:/var/lib/mixd:/usr/sbin/nologin$' "$root/etc/passwd"
        check $? "system user mixd, home /var/lib/mixd, no login ($(cat "$root/etc/passwd"))"
        grep -q '^mixd:x:' "$root/etc/group"; check $? "group mixd"
else
        echo "note: systemd-sysusers not installed; the user entry was not applied"
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
        # owners are resolved against the host's user database, so apply it in a copy where
        # user mixd maps to the current user
        sed "s/ mixd mixd / $(id -un) $(id -gn) /" "$root/usr/lib/tmpfiles.d/mixd.conf" >"$tmp/tmpfiles.conf"
        systemd-tmpfiles --root="$root" --create "$tmp/tmpfiles.conf" >"$tmp/tmpfiles" 2>&1
        check $? "systemd-tmpfiles accepts mixd.conf"
        for d in var/lib/mixd var/lib/mixd/models; do
                [ "$(stat -c %a "$root/$d" 2>/dev/null)" = 750 ]; check $? "/$d created with mode 0750"
        done
else
        echo "note: systemd-tmpfiles not installed; the directory entries were not applied"
fi

echo "package: lintian $errors errors, $warnings warnings; $pass passed, $fail failed"
[ "$fail" = 0 ]
