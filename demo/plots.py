"""PNG plots of the demo report (matplotlib, Agg backend): losses, accuracy by length, efficiency.

matplotlib is the `demo` extra (`pip install -e ".[demo]"`, installed by `make demo`); it is imported only
when a plot is drawn, so nothing else in the project needs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(ax: Any, title: str, xlabel: str, ylabel: str | None = None, *, log2_x: bool = False,
           unit_y: bool = False, legend_size: float | None = None) -> None:
    """Title, labels, scales, legend and grid of one panel."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if log2_x:
        ax.set_xscale("log", base=2)
    if unit_y:
        ax.set_ylim(0, 1.05)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)


def _save(fig: Any, plt: Any, out: Path, name: str) -> str:
    """Write `fig` as out/name (PNG) and close it; returns the name."""
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def plot_losses(out: Path, stages: list[dict[str, Any]]) -> str:
    """One panel per stage, from each stage's metrics.jsonl: the training loss per step and, when the stage
    validated, the validation loss (`val/loss`) at its steps."""
    from demo.report import read_losses

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 2.8), squeeze=False)
    for ax, s in zip(axes[0], stages, strict=True):
        steps, losses = read_losses(s["output_dir"])
        ax.plot(steps, losses, lw=1.0, label="train")
        val_steps, val_losses = read_losses(s["output_dir"], "val/loss")
        if val_steps:
            ax.plot(val_steps, val_losses, "o-", lw=1.2, ms=3, label="val")
            ax.legend(fontsize=7)
        ax.set_title(f"{s['stage']} ({'dts recon.' if s['stage'] == 'dts' else 'LM'})")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    return _save(fig, plt, out, "loss_curves.png")


def plot_accuracy_by_length(out: Path, m: dict[str, Any]) -> str:
    """Score per length bucket for every bench and mode, plus needle accuracy vs sweep length."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.4))
    styles = {"full": "-", "sparse": "--"}
    for mode, per in m["eval_detail"].items():
        for bench, met in per.items():
            buckets = met.get("by_length", {})
            labels = list(buckets)
            ax.plot(labels, [buckets[k]["score"] for k in labels], styles.get(mode, ":"), marker="o",
                    label=f"{bench} ({mode})")
    _style(ax, "test split: score by video length", "video length bucket", "accuracy / mIoU", unit_y=True,
           legend_size=7)
    for mode in dict.fromkeys(r["mode"] for r in m["sweep"]):
        rows = [r for r in m["sweep"] if r["mode"] == mode]
        bx.plot([r["frames"] for r in rows], [r["accuracy"] for r in rows], styles.get(mode, ":"), marker="o",
                label=mode)
    _style(bx, "needle accuracy vs frames (sweep)", "frames (1 fps)", log2_x=True, unit_y=True)
    return _save(fig, plt, out, "accuracy_by_length.png")


def plot_efficiency(out: Path, sweep: list[dict[str, Any]]) -> str:
    """KV bytes kept at decode start and attention-pair density vs frames, per mode."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.4))
    for mode in dict.fromkeys(r["mode"] for r in sweep):
        rows = [r for r in sweep if r["mode"] == mode]
        frames = [r["frames"] for r in rows]
        ax.plot(frames, [r["kept_kv_bytes"] / 1024 for r in rows], marker="o", label=f"kept ({mode})")
        bx.plot(frames, [r["pair_density"] for r in rows], marker="o", label=mode)
    if sweep:
        rows = [r for r in sweep if r["mode"] == sweep[0]["mode"]]
        ax.plot([r["frames"] for r in rows], [r["full_kv_bytes"] / 1024 for r in rows], "k:", label="full cache")
    ax.set_yscale("log")
    _style(ax, "KV cache at decode start", "frames", "KiB", log2_x=True, legend_size=8)
    _style(bx, "attention-pair density of the prefill", "frames", "allowed / causal pairs", log2_x=True,
           unit_y=True)
    return _save(fig, plt, out, "efficiency_vs_frames.png")


def plot_all(out: Path, m: dict[str, Any]) -> list[str]:
    """Every plot of the report; returns the file names (relative to `out`)."""
    return [plot_losses(out, m["stages"]), plot_accuracy_by_length(out, m), plot_efficiency(out, m["sweep"])]
