"""Pictures (PNG or SVG by the file's suffix, matplotlib, written on request):

- `swim_lanes`: pypto SIM's simulated cores over time (one lane per AIC/AIV core that ran a task), from the cost
  model's swim.json;
- `phase_timing`: the `--timing` phases as horizontal bars;
- `visibility`: per token of a step, the window positions and compressed entries it attends (the state contract
  and the spec's visibility rules, computed from the config and start positions, picks from the run);
- `tile_schedule`: the loop nest of a compiled (tile-level) stage — each loop a bar whose length is its trip count,
  annotated with the ops in its body by kind;
- `pass_errors`: per pipeline level, each output's normalised and max abs error against the level before (with the
  pass's declared tolerance), against the tensor-level golden and against the FP32 reference.
Files are written atomically (rendered to memory first)."""
from __future__ import annotations

import io
import json
import os
from collections import Counter


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _save(plt, fig, path: str, sink=None) -> None:
    """The picture (SVG by suffix, else PNG) written to `path`, or added to `sink` (an io.Outputs)."""
    from attnc.io import atomic_write_bytes

    fmt = "svg" if path.endswith(".svg") else "png"
    buf = io.BytesIO()
    fig.tight_layout()
    import matplotlib

    # an SVG's clip-path and image ids are salted with a random uuid unless svg.hashsalt is set (soak: 2 runs differed)
    with matplotlib.rc_context({"svg.hashsalt": "attnc"}):
        fig.savefig(buf, format=fmt, metadata={"Software": None} if fmt == "png" else {"Date": None})
    plt.close(fig)
    if sink is not None:
        sink.add(path, buf.getvalue())
    else:
        atomic_write_bytes(path, buf.getvalue())


def swim_lanes(swim_json: str, path: str, title: str, sink=None) -> None:
    with open(swim_json) as f:
        cores = [c for c in json.load(f) if c.get("tasks")]
    plt, fig = _figure(11, max(2.5, 0.28 * len(cores) + 1.2))
    ax = fig.add_subplot(111)
    colours = plt.get_cmap("tab20")
    for lane, core in enumerate(cores):
        bars = [(t["execStart"], max(t["execEnd"] - t["execStart"], 1)) for t in core["tasks"]]
        ax.broken_barh(bars, (lane - 0.4, 0.8),
                       facecolors=[colours(t.get("subGraphId", 0) % 20) for t in core["tasks"]])
    ax.set_yticks(range(len(cores)), [f"{c['coreType']} {c['blockIdx']}" for c in cores], fontsize=7)
    ax.set_xlabel("simulated cycles")
    ax.set_title(title + " (colour: subgraph)")
    ax.invert_yaxis()
    _save(plt, fig, path, sink)


def phase_timing(phases: list[tuple[str, float]], path: str, title: str) -> None:
    plt, fig = _figure(9, max(2.5, 0.3 * len(phases) + 1.2))
    ax = fig.add_subplot(111)
    names = [n for n, _ in phases]
    secs = [s for _, s in phases]
    colour = ["tab:orange" if "verify" in n else "tab:blue" if n.startswith("pass") else "tab:grey" for n in names]
    ax.barh(range(len(phases)), secs, color=colour)
    ax.set_yticks(range(len(phases)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds")
    ax.set_title(title + f"\n(total {sum(secs):.2f} s; blue: passes, orange: verification)", fontsize=10)
    _save(plt, fig, path)


def visibility(cfg: dict, start_pos: list[int], kind: str, path: str, title: str,
               picks: list[list[list[int]]] | None = None) -> None:
    """kind: 'swa' (window only), 'hca' (every complete entry w < floor((t+1)/m)), 'csa' (the picks among the
    complete entries). Rows are tokens (batch row b, step row s, position t)."""
    rows, window, entries = visibility_grid(cfg, start_pos, kind, picks)
    n_cmp = entries.shape[1] if entries.any() else 0
    _draw_visibility(rows, window, entries, n_cmp, cfg, kind, path, title)


def visibility_grid(cfg: dict, start_pos: list[int], kind: str, picks=None):
    """(rows (b, s, t), window [rows, t_max+1] 0/1, entries [rows, n_cmp]: 0 not complete, 0.4 complete,
    1 attended, -1 a pick of an entry not yet complete)."""
    import numpy as np

    W, S, m = cfg["window"], cfg["seq"], cfg["compress_ratio"]
    rows = [(b, s, p + s) for b, p in enumerate(start_pos) for s in range(S)]
    t_max = max(t for _, _, t in rows)
    n_cmp = (t_max + 1) // m if m and kind != "swa" else 0
    window = np.zeros((len(rows), t_max + 1))
    entries = np.zeros((len(rows), max(n_cmp, 1)))
    for i, (b, s, t) in enumerate(rows):
        window[i, max(0, t - W + 1): t + 1] = 1
        if n_cmp:
            complete = (t + 1) // m
            entries[i, :complete] = 0.4  # complete, visible to this token
            if kind == "csa" and picks is not None:
                for w in picks[b][s]:
                    if w >= 0:
                        entries[i, w] = 1.0 if w < complete else -1.0  # a pick of an entry not yet complete
            elif kind == "hca":
                entries[i, :complete] = 1.0
    return rows, window, entries


def _draw_visibility(rows, window, entries, n_cmp, cfg, kind, path, title):
    W, m = cfg["window"], cfg["compress_ratio"]
    plt, fig = _figure(11, max(2.5, 0.35 * len(rows) + 1.5))
    grid = fig.add_gridspec(1, 2, width_ratios=[3, 2] if n_cmp else [1, 0.01])
    ax = fig.add_subplot(grid[0])
    ax.imshow(window, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    labels = [f"b{b} s{s} t={t}" for b, s, t in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel(f"window positions (W = {W}; ring slot = position mod {W})")
    ax.set_title("window keys")
    if n_cmp:
        ax2 = fig.add_subplot(grid[1])
        from matplotlib.colors import BoundaryNorm, ListedColormap

        cmap = ListedColormap(["tab:red", "white", "#b7e4b7", "#1b7f3b"])  # bad pick, not complete, complete, attended
        ax2.imshow(entries, aspect="auto", cmap=cmap, norm=BoundaryNorm([-1.5, -0.5, 0.2, 0.7, 1.5], cmap.N),
                   interpolation="nearest")
        ax2.set_yticks(range(len(rows)), labels, fontsize=7)
        ax2.set_xlabel(f"compressed entries (m = {m})")
        ax2.set_title({"hca": "entries attended (all complete)",
                       "csa": "picked (dark) among complete (light)"}.get(kind, "complete entries"))
    fig.suptitle(title)
    _save(plt, fig, path)


def loop_nest(module) -> list[tuple[int, str, int, Counter]]:
    """(depth, loop kind, trip count, op kinds in its own body) for every tile.parallel / scf.for, in order."""
    from xdsl.dialects import scf

    rows = []

    def const(v):
        from xdsl.dialects.arith import ConstantOp

        owner = getattr(v, "owner", None)
        return owner.value.value.data if isinstance(owner, ConstantOp) else None

    def trip_count(op) -> int:
        if isinstance(op, scf.ForOp):
            lo, hi, step = const(op.lb), const(op.ub), const(op.step)
        else:  # tile.parallel: rows [lower, upper) in chunks of `rows`
            lo, hi, step = const(op.lower), const(op.upper), op.rows.value.data
        if None in (lo, hi, step) or not step:
            return 0
        return max(0, -(-(hi - lo) // step))

    def walk(block_ops, depth):
        for op in block_ops:
            if op.name in ("scf.for", "tile.parallel"):
                body = [o for r in op.regions for b in r.blocks for o in b.ops]
                kinds = Counter(o.name.split(".", 1)[1] if o.name.startswith("tile.") else o.name for o in body
                                if o.name not in ("scf.for", "tile.parallel", "scf.yield", "tile.yield"))
                rows.append((depth, op.name, trip_count(op), kinds))
                walk(body, depth + 1)
            else:
                for r in op.regions:
                    for b in r.blocks:
                        walk(list(b.ops), depth)

    walk([module], 0)
    return rows


def tile_schedule(module, path: str, title: str) -> None:
    nest = loop_nest(module)
    plt, fig = _figure(11, max(2.5, 0.4 * len(nest) + 1.2))
    ax = fig.add_subplot(111)
    longest = max([n for _, _, n, _ in nest] + [1])
    for i, (depth, kind, trips, ops) in enumerate(nest):
        colour = "tab:green" if kind == "tile.parallel" else "tab:purple"
        ax.barh(i, max(trips, 0.2), left=depth * 0.0, color=colour, alpha=0.35 + 0.15 * min(depth, 4))
        top = ", ".join(f"{n}×{k}" for k, n in sorted(ops.items(), key=lambda kv: -kv[1])[:6])
        ax.text(0.02 * longest, i, f"{'  ' * depth}{kind} ×{trips or '?'}: {top}", va="center", fontsize=7)
    ax.set_yticks(range(len(nest)), [f"depth {d}" for d, _, _, _ in nest], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("iterations (green: tile.parallel over token rows, purple: scf.for)")
    ax.set_title(title)
    if not nest:
        ax.text(0.5, 0.5, "no loops: compile to tile level first", ha="center", transform=ax.transAxes)
    _save(plt, fig, path)


ERROR_FLOOR = 1e-12  # an exact level (error 0) is drawn here, on the log axis


def pass_error_series(data) -> dict[tuple[str, str, str], list[float]]:
    """What `pass_errors` draws: {(panel "rel"|"abs", against "prev"|"golden"|"reference"|"tolerance", output):
    one value per level (NaN where there is none: no level before the input, no reference for the output)."""
    nan = float("nan")
    series = {}
    for panel in ("rel", "abs"):
        for against in ("prev", "golden", "reference"):
            for out in data.outputs:
                values = [getattr(level, f"{panel}_{against}").get(out, nan) for level in data.levels]
                if any(v == v for v in values):
                    series[(panel, against, out)] = values
    series[("rel", "tolerance", "")] = [nan if lv.tolerance is None else lv.tolerance for lv in data.levels]
    return series


def pass_errors(data, path: str, title: str, note: str = "") -> dict:
    """Two panels over the levels (input, then each pass): normalised error (with the declared tolerances) and
    max abs error; per output (colour) against the level before (solid), the tensor level (dotted) and the FP32
    reference (dashed). Returns the series drawn (`pass_error_series`)."""
    import math

    series = pass_error_series(data)
    labels = [level.label.split("{")[0] for level in data.levels]
    plt, fig = _figure(11, 7)
    colours = plt.get_cmap("tab10")
    styles = {"prev": ("-", "o", "vs level before"), "golden": (":", "s", "vs tensor level"),
              "reference": ("--", "^", "vs FP32 reference")}
    xs = list(range(len(labels)))
    for row, (panel, ylabel) in enumerate([("rel", "normalised error\nmax|a−b| / max|b|"),
                                           ("abs", "max abs error")]):
        ax = fig.add_subplot(2, 1, row + 1)
        for (p, against, out), values in series.items():
            if p != panel or against == "tolerance":
                continue
            style, marker, what = styles[against]
            colour = colours(data.outputs.index(out) % 10)
            shown = [ERROR_FLOOR if v == 0 else min(v, 1e6) for v in values]
            ax.plot(xs, [v if not math.isnan(v) else float("nan") for v in shown], linestyle=style, marker=marker,
                    color=colour, markersize=4, label=f"{out} {what}")
        if panel == "rel":
            tol = series[("rel", "tolerance", "")]
            ax.scatter(xs, [ERROR_FLOOR if t == 0 else t for t in tol], marker="_", s=400, color="black",
                       zorder=5, label="declared tolerance")
        ax.set_yscale("log")
        ax.axhline(ERROR_FLOOR, color="grey", linewidth=0.5)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xticks(xs, labels if row else [""] * len(xs), rotation=30, ha="right", fontsize=7)
        ax.grid(True, which="major", axis="y", alpha=0.3)
        if row == 0:  # colour = output, line style = what it is compared with
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], color=colours(i % 10), linewidth=3, label=out)
                       for i, out in enumerate(data.outputs)]
            handles += [Line2D([], [], color="black", linestyle=style, marker=marker, markersize=4, label=what)
                        for style, marker, what in styles.values()]
            handles.append(Line2D([], [], color="black", marker="_", markersize=12, linestyle="none",
                                  label="declared tolerance"))
            ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title + f"\n(0 = exact is drawn at {ERROR_FLOOR:.0e}){'; ' + note if note else ''}", fontsize=9)
    _save(plt, fig, path)
    return series


def png_size(path: str) -> tuple[int, int]:
    """(width, height) of a PNG, read from its header (for tests and messages)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{os.path.basename(path)} is not a PNG")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
