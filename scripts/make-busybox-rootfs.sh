#!/usr/bin/env bash
# Makes a minimal busybox root filesystem in DIR from Debian's busybox-static:
# the static binary, every applet as a symlink, /etc/passwd and /etc/group.
set -euo pipefail
root=${1:?usage: make-busybox-rootfs.sh DIR}
busybox=$(command -v busybox || echo /bin/busybox)
mkdir -p "$root"/{bin,sbin,etc,root,usr/bin,usr/sbin,var,dev,proc,sys,home/app}
install -d -m 1777 "$root/tmp"
install -m 0755 "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
daemon:x:1:
nogroup:x:65534:
app:x:1000:
GROUP
chown 1000:1000 "$root/home/app"
