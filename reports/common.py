"""What every report page shares: the 95% intervals, inline SVG from matplotlib, tables, and
numbers that carry their exact value (`data-key`/`data-value`) so tests read the page the way
a marketer does and still compare exact figures.

Intervals: a difference of means gets Welch's normal interval (`welch`). A difference of rates
(shares of recipients) gets Newcombe's hybrid score interval instead: each rate's Wilson score
interval, recombined by the square-and-add rule (`rate_difference_interval`). Written for any
linear combination of rates, that rule is Zou and Donner's MOVER, so a post-stratified or
weighted difference uses the same code. Unlike the normal interval it does not collapse to a
point when a group has no events (an unsubscribe rate of 0.2% in a group of 300), and it keeps
its coverage at small counts.

Pages are self-contained: no scripts, no external resources, plots as inline SVG.
"""

from __future__ import annotations

import html
import io

import numpy as np

Z = 1.96  # two-sided 95% normal interval


def welch(treated: np.ndarray, control: np.ndarray) -> tuple[float, float]:
    """Difference in means and its Welch (unpooled) standard error (0 with under two rows)."""
    a, b = np.asarray(treated, float), np.asarray(control, float)
    if min(len(a), len(b)) < 2:
        return float(a.mean() - b.mean()), 0.0
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return float(a.mean() - b.mean()), float(se)


def wilson(rate: np.ndarray, n: np.ndarray, z: float = Z) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's score interval of each rate observed in `n` trials (`n` may be an effective,
    non-integer size); never outside [0, 1], never of zero width."""
    p, n = np.asarray(rate, float), np.asarray(n, float)
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def rate_difference_interval(
    coefficients: np.ndarray, rates: np.ndarray, sizes: np.ndarray, z: float = Z
) -> tuple[float, float, float]:
    """sum(coefficients * rates) and its 95% interval by MOVER over Wilson intervals: for
    `rates` (p1, p2), `sizes` (n1, n2) and coefficients (1, -1) this is exactly Newcombe's
    hybrid score interval (his method 10) for p1 - p2; with a pair of rates per stratum and
    coefficients (+share, -share) it is the post-stratified difference's."""
    c, p = np.asarray(coefficients, float), np.asarray(rates, float)
    low, high = wilson(p, sizes, z)
    below = np.where(c > 0, p - low, high - p)  # how far each term may pull the sum down
    above = np.where(c > 0, high - p, p - low)
    effect = float(np.dot(c, p))
    return (
        effect,
        effect - float(np.sqrt(np.sum((c * below) ** 2))),
        effect + float(np.sqrt(np.sum((c * above) ** 2))),
    )


def svg(figure) -> str:
    """A matplotlib figure as inline SVG (closed afterwards)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def interval_plot(
    labels: list[str], effects: list[float], lows: list[float], highs: list[float], xlabel: str
) -> str:
    """One row per label: the effect as a dot, its 95% CI as a bar, zero as a grey line."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 0.6 + 0.45 * max(len(labels), 1)))
    for i, (e, lo, hi) in enumerate(zip(effects, lows, highs, strict=True)):
        axis.errorbar(e, i, xerr=[[e - lo], [hi - e]], fmt="o", color="#1f5fbf", capsize=3)
    axis.axvline(0, color="grey", lw=1)
    axis.set_yticks(range(len(labels)), labels)
    axis.invert_yaxis()
    axis.set_xlabel(xlabel)
    return svg(figure)


def key(name: str) -> str:
    """A name as a `data-key` part: lower case, anything but letters and digits as `_`."""
    return "".join(c if c.isalnum() else "_" for c in name.lower())


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Cells are trusted HTML (escape text before); headers are escaped here."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(data_key: str, value: float, fmt: str) -> str:
    """A number in the page, machine-readable too (data-key/data-value) for checks."""
    return f'<span data-key="{data_key}" data-value="{value!r}">{format(value, fmt)}</span>'


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1060px;
margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.summary{background:#f3f8ff;border-left:4px solid #3b82f6;padding:.8em 1em}
.muted{color:#666;font-size:.9em}svg{max-width:100%;height:auto}
.flag{color:#b45309;font-weight:600}
"""


def head(title: str) -> str:
    """The page's opening, up to and including `<body>`: no scripts, no external resources."""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
    )
