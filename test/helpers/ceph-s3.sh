#!/bin/bash
# A throwaway single-node Ceph on loopback: one monitor, one memstore OSD and radosgw, as root, no
# systemd: a real S3 server (SigV4 checked) for the s3:// cache tests. Debian packages: radosgw
# ceph-mon ceph-osd ceph-common. Usage: ceph-s3.sh DIR RGW_PORT MON_PORT ACCESS_KEY SECRET_KEY.
# S3 then answers at http://127.0.0.1:RGW_PORT; DIR/pids lists the daemons' pids (kill them to stop).
set -euo pipefail
C=${1:?usage: ceph-s3.sh DIR RGW_PORT MON_PORT ACCESS_KEY SECRET_KEY}
RGWPORT=${2:?}; MONPORT=${3:?}; ACCESS=${4:?}; SECRET=${5:?}
mkdir -p "$C"/{mon,osd0,run,log,rgw}
FSID=$(cat /proc/sys/kernel/random/uuid)
cat > "$C/ceph.conf" <<CONF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MONPORT
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
ms client mode = crc secure
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
run dir = $C/run
log file = $C/log/\$name.log
admin socket = $C/run/\$name.asok
keyring = $C/keyring
mon data = $C/mon
osd data = $C/osd0
osd objectstore = memstore
memstore device bytes = 1073741824
ms bind ipv6 = false
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$RGWPORT
rgw data = $C/rgw
CONF
cd "$C"
ceph-authtool --create-keyring keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool keyring --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MONPORT]" monmap >/dev/null
ceph-mon -c ceph.conf --mkfs -i a --monmap monmap --keyring keyring
ceph-mon -c ceph.conf -i a --pid-file "$C/run/mon.pid"
UUID=$(cat /proc/sys/kernel/random/uuid)
ceph -c ceph.conf osd new "$UUID" >/dev/null
ceph-osd -c ceph.conf -i 0 --mkfs --osd-uuid "$UUID" 2>/dev/null
ceph-osd -c ceph.conf -i 0 --pid-file "$C/run/osd.pid" 2>/dev/null
radosgw -c ceph.conf -n client.rgw --pid-file "$C/run/rgw.pid" --client-mount-timeout=30
for _ in $(seq 1 240); do curl -sf -m 1 "http://127.0.0.1:$RGWPORT/" >/dev/null && break; sleep 0.25; done
curl -sf -m 1 "http://127.0.0.1:$RGWPORT/" >/dev/null || { echo "radosgw did not answer on port $RGWPORT (logs in $C/log)" >&2; exit 1; }
radosgw-admin -c ceph.conf -n client.rgw user create --uid=test --display-name=test --access-key="$ACCESS" --secret-key="$SECRET" >/dev/null
cat run/mon.pid run/osd.pid run/rgw.pid > pids
