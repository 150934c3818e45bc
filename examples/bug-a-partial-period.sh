#!/usr/bin/env bash
# Linux virtio_snd bug (a) on the default guest: after a stop, the period that was half written
# is never queued again (prepare() keeps the stale msg->length), so a restarted stream loses
# that slot's periods and, once nothing is left in flight, stalls RUNNING.
#
#   examples/bug-a-partial-period.sh [WORKDIR]          (README: "Debugging the driver")
#
# Builds examples/pcm_restart.c (static, raw ALSA ioctls), adds it to the guest's initramfs,
# runs it under `pyvmm run` with the decoded trace on and the playback in a WAV, then prints
# what the device saw. PYVMM overrides the pyvmm command (default: this checkout's .venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pyvmm=${PYVMM:-$here/../.venv/bin/pyvmm}
work=${1:-$(mktemp -d /tmp/pyvmm-bug-a.XXXXXX)}
mkdir -p "$work/root"

gcc -static -O2 -Wall -o "$work/root/pcm_restart" "$here/pcm_restart.c"
(cd "$work/root" && echo pcm_restart | cpio --quiet -o -H newc) > "$work/pcm_restart.cpio"

echo "--- the guest (pcm_restart):"
status=0
"$pyvmm" run --device "virtio-snd,backend.path=$work/out.wav" --extra-initrd "$work/pcm_restart.cpio" \
    --trace-dev snd:ctl,io --trace-file "$work/trace.jsonl" -- /pcm_restart 2> "$work/stderr.txt" || status=$?
if [ "$status" != 0 ]; then
    tail -20 "$work/stderr.txt"
    exit "$status"
fi

echo "--- the device (stream commands and I/O messages queued; all records: $work/stderr.txt):"
grep -E 'ctl request PCM_(SET_PARAMS|PREPARE|START|STOP|RELEASE)|io queued' "$work/stderr.txt" |
    sed -E 's/ (payload|head|queue|descs)=[^ ]*//g'
echo "--- periods the device found no message in (the whole run): $(grep -c 'io xrun' "$work/stderr.txt")"
"$pyvmm" trace summary "$work/trace.jsonl"
echo "(work directory: $work)"
