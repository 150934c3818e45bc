"""``pyvmm trace plot``: a timeline PNG per stream from a JSON-lines trace (matplotlib).

Per stream, two panels share the time axis: messages in flight (queued minus completed) and
each completion's lateness against its deadline; xruns, refused messages, injected faults and
queue faults are marked on both.
"""

from __future__ import annotations

from pathlib import Path

from pyvmm.errors import VmmError
from pyvmm.trace.summary import read_records


def plot_timeline(trace: Path, output: Path) -> int:
    """Draw ``trace`` into ``output`` (PNG); returns the number of streams drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VmmError("pyvmm trace plot needs matplotlib (pip install 'pyvmm[plot]')") from None
    streams: dict[tuple[str, int], dict[str, list]] = {}
    marks: list[tuple[float, str]] = []
    for rec in read_records(trace):
        t, cat, kind = float(rec["t"]), rec.get("cat"), rec.get("kind")
        if cat == "io" and "stream" in rec:
            s = streams.setdefault((rec.get("dev", "?"), int(rec["stream"])),
                                   {"t": [], "inflight": [], "late_t": [], "late": [], "xrun": [], "reject": []})
            depth = s["inflight"][-1] if s["inflight"] else 0
            if kind == "queued":
                s["t"].append(t)
                s["inflight"].append(depth + 1)
            elif kind == "complete":
                s["t"].append(t)
                s["inflight"].append(max(0, depth - 1))
                if rec.get("late_ms") is not None:
                    s["late_t"].append(t)
                    s["late"].append(float(rec["late_ms"]))
                if rec.get("status") not in (None, "OK"):
                    s["reject"].append(t)
            elif kind == "xrun":
                s["xrun"].append(t)
            elif kind == "reject":
                s["reject"].append(t)
        elif cat == "fault" or (cat == "queue" and kind == "fault"):
            marks.append((t, rec.get("what") or rec.get("fault") or kind))
    if not streams:
        raise VmmError(f"{trace}: no I/O messages to plot")
    fig, axes = plt.subplots(2 * len(streams), 1, sharex=True, figsize=(11, 3.2 * len(streams)), squeeze=False)
    for n, ((dev, stream), s) in enumerate(sorted(streams.items())):
        top, bottom = axes[2 * n][0], axes[2 * n + 1][0]
        top.step(s["t"], s["inflight"], where="post", color="tab:blue")
        top.set_ylabel("in flight")
        top.set_title(f"{dev} stream {stream}")
        bottom.plot(s["late_t"], s["late"], ".", markersize=3, color="tab:green")
        bottom.axhline(0, color="grey", linewidth=0.5)
        bottom.set_ylabel("late (ms)")
        for ax in (top, bottom):
            for t in s["xrun"]:
                ax.axvline(t, color="tab:red", alpha=0.5, linewidth=0.8)
            for t in s["reject"]:
                ax.axvline(t, color="tab:orange", alpha=0.5, linewidth=0.8, linestyle=":")
            for t, _what in marks:
                ax.axvline(t, color="tab:purple", alpha=0.7, linewidth=1.0, linestyle="--")
        if marks and n == 0:
            for t, what in marks:
                top.annotate(what, (t, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                             va="top", color="tab:purple")
    axes[-1][0].set_xlabel("seconds since VM start (red: xrun, orange: error status/refused, purple: fault)")
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=100)
    except OSError as exc:
        raise VmmError(f"cannot write {output}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return len(streams)
