"""The overview's chart, drawn on the server as SVG: jobs finished per minute over the last hour
(completed and failed, stacked) and their mean latency from submit to outcome (a line)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 720, 180, 36
MINUTES = 60


def render(finished: Sequence[tuple[float, str, float]], now: float) -> Markup:
    """The chart of ``(finished, state, latency)`` rows of the hour before ``now``."""
    done = [0] * MINUTES
    failed = [0] * MINUTES
    latency_sum = [0.0] * MINUTES
    for at, state, latency in finished:
        slot = MINUTES - 1 - int((now - at) // 60)
        if not 0 <= slot < MINUTES:
            continue
        if state == "completed":
            done[slot] += 1
        else:
            failed[slot] += 1
        latency_sum[slot] += max(0.0, latency)
    totals = [d + f for d, f in zip(done, failed, strict=True)]
    top = max(1, *totals)
    means = [latency_sum[i] / totals[i] if totals[i] else None for i in range(MINUTES)]
    top_latency = max([m for m in means if m is not None] or [1.0])
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bar_w = plot_w / MINUTES
    parts = [
        f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="jobs finished per minute and mean latency, last hour">',
        f'<rect x="{PAD}" y="{PAD}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for i in range(MINUTES):
        x = PAD + i * bar_w
        h_done = plot_h * done[i] / top
        h_failed = plot_h * failed[i] / top
        if done[i]:
            parts.append(f'<rect class="done" x="{x:.1f}" y="{PAD + plot_h - h_done:.1f}" '
                         f'width="{bar_w - 1:.1f}" height="{h_done:.1f}">'
                         f'<title>{done[i]} completed</title></rect>')
        if failed[i]:
            parts.append(f'<rect class="failed" x="{x:.1f}" y="{PAD + plot_h - h_done - h_failed:.1f}" '
                         f'width="{bar_w - 1:.1f}" height="{h_failed:.1f}"><title>{failed[i]} failed or '
                         f'cancelled</title></rect>')
    points = [(PAD + (i + 0.5) * bar_w, PAD + plot_h * (1 - m / top_latency))
              for i, m in enumerate(means) if m is not None]
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline class="latency" points="{path}"/>')
    parts += [
        f'<text x="{PAD}" y="{PAD - 8}" class="label">{top} jobs/min</text>',
        f'<text x="{WIDTH - PAD}" y="{PAD - 8}" class="label latency-label" text-anchor="end">'
        f'{escape(_seconds(top_latency))} mean latency</text>',
        f'<text x="{PAD}" y="{HEIGHT - 10}" class="label">60 min ago</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 10}" class="label" text-anchor="end">now</text>',
        "</svg>",
    ]
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text only


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
