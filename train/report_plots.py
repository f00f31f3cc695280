"""PNG plots of the demo report (matplotlib, Agg backend): losses, accuracy by length, efficiency."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(out: Path, stages: list[dict[str, Any]]) -> str:
    """One loss-curve panel per stage, from each stage's metrics.jsonl."""
    from train.report import read_losses

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 2.8), squeeze=False)
    for ax, s in zip(axes[0], stages, strict=True):
        steps, losses = read_losses(s["output_dir"])
        ax.plot(steps, losses, lw=1.0)
        ax.set_title(f"{s['stage']} ({'dts recon.' if s['stage'] == 'dts' else 'LM'})")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    name = "loss_curves.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


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
    ax.set_title("test split: score by video length")
    ax.set_xlabel("video length bucket")
    ax.set_ylabel("accuracy / mIoU")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for mode in dict.fromkeys(r["mode"] for r in m["sweep"]):
        rows = [r for r in m["sweep"] if r["mode"] == mode]
        bx.plot([r["frames"] for r in rows], [r["accuracy"] for r in rows], styles.get(mode, ":"), marker="o",
                label=mode)
    bx.set_xscale("log", base=2)
    bx.set_title("needle accuracy vs frames (sweep)")
    bx.set_xlabel("frames (1 fps)")
    bx.set_ylim(0, 1.05)
    bx.legend()
    bx.grid(alpha=0.3)
    fig.tight_layout()
    name = "accuracy_by_length.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


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
    ax.set_title("KV cache at decode start")
    ax.set_xlabel("frames")
    ax.set_ylabel("KiB")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    bx.set_title("attention-pair density of the prefill")
    bx.set_xlabel("frames")
    bx.set_ylabel("allowed / causal pairs")
    bx.set_xscale("log", base=2)
    bx.set_ylim(0, 1.05)
    bx.legend()
    bx.grid(alpha=0.3)
    fig.tight_layout()
    name = "efficiency_vs_frames.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def plot_all(out: Path, m: dict[str, Any]) -> list[str]:
    """Every plot of the report; returns the file names (relative to `out`)."""
    return [plot_losses(out, m["stages"]), plot_accuracy_by_length(out, m), plot_efficiency(out, m["sweep"])]
