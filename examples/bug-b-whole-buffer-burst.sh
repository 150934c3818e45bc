#!/usr/bin/env bash
# Linux virtio_snd bug (b) on the default guest: a whole buffer of completions arriving between
# two pointer calls moves the driver's position by exactly the buffer size, ALSA sees no
# progress, and the stream stalls while RUNNING.
#
#   examples/bug-b-whole-buffer-burst.sh [WORKDIR]      (README: "Debugging the driver")
#
# The guest plays with `aplay -N` (non-blocking: it polls, and every poll calls the driver's
# pointer, as sound servers do) and prints ALSA's state and positions once a second; from the
# host, once the stream has played 5 s, the monitor arms `burst 0 8`: the next 8 completions (the whole
# 8-period buffer) are held and given to the driver at once. PYVMM overrides the pyvmm command.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pyvmm=${PYVMM:-$here/../.venv/bin/pyvmm}
work=${1:-$(mktemp -d /tmp/pyvmm-bug-b.XXXXXX)}
mkdir -p "$work"
mon=$work/vm.mon

guest='
aplay -N -q -D hw:0,0 -f S16_LE -c 2 -r 48000 --period-size=6000 --buffer-size=48000 -t raw /dev/zero &
show() {  # state, hw_ptr, appl_ptr from procfs, with shell builtins only (forks are slow in some guests)
    read -r up _ < /proc/uptime
    line=
    while read -r key a b; do
        case $key in state:) line="$line state $a" ;; hw_ptr|appl_ptr) line="$line $key $b" ;; esac
    done < /proc/asound/card0/pcm0p/sub0/status
    echo "guest ${up}s:$line"
}
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1; show; done
kill $!
'

echo "--- the guest (ALSA's view of the stream, once a second):"
"$pyvmm" run --device virtio-snd,backend=null --monitor "$mon" --trace-dev snd:ctl,io,fault \
    --trace-file "$work/trace.jsonl" -- sh -c "$guest" 2> "$work/stderr.txt" &
vm=$!
played() { "$pyvmm" monitor "$mon" snd0 info 2>/dev/null | sed -nE 's/^stream 0 output: started,.* periods ([0-9]+),.*/\1/p'; }
until [ "$(played)" -ge 40 ] 2>/dev/null; do  # 5 s of audio played
    kill -0 "$vm" 2>/dev/null || { tail -20 "$work/stderr.txt"; exit 1; }
    sleep 0.5
done
echo "host: $("$pyvmm" monitor "$mon" snd0 burst 0 8 | head -1)"
status=0
wait "$vm" || status=$?

echo "--- the device around the burst (all records: $work/stderr.txt):"
grep -E 'fault|ctl request PCM_(STOP|RELEASE)|io (queued|complete)' "$work/stderr.txt" |
    sed -E 's/ (payload|head|queue|descs|queued_t|deadline_t|latency_bytes)=[^ ]*//g' |
    awk '/fault inject/ { on = 1 } on { print } /fault fire/ { tail = 1 } tail && ++n > 3 { exit }'
echo "--- periods the device found no message in (the whole run): $(grep -c 'io xrun' "$work/stderr.txt")"
echo "(work directory: $work)"
exit "$status"
