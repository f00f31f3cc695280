"""The demo report: ``metrics.json``, PNG plots (matplotlib Agg) and ``report.md``, plus a stdout summary.

Inputs are what the demo produced: stage summaries (with each stage's ``metrics.jsonl``), the
per-bench evaluation metrics (demo/evaluate.py: ``{mode: {bench: {"metrics": ...}}}``) and the needle
sweep rows. Everything in the report is read from those; nothing is recomputed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

GOALS = {"mcq_accuracy": 0.90, "grounding_miou": 0.50, "needle_accuracy": 0.90}
MAX_GAP_POINTS = 2.0
# a gap of MAX_GAP_POINTS must be at least this many samples of every bench
MIN_SAMPLES_PER_GAP = 10
# long-video goals, all in the chunked prefill + bi-level decoding mode(s)
LONG_GOALS = {"sweep_needle_accuracy": 0.90, "long_grounding_miou": 0.50}
LONGEST_SWEEP_MAX = {"pair_density": 0.35, "kv_kept_ratio": 0.40}


def read_losses(stage_dir: str | Path, key: str = "loss") -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in a stage's metrics.jsonl: the training loss (`loss`, event and validation
    records skipped) or the validation loss (`val/loss`, logged every `loop.eval_every_steps`)."""
    steps, losses = [], []
    path = Path(stage_dir) / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if key in rec:
            steps.append(int(rec["step"]))
            losses.append(float(rec[key]))
    return steps, losses


def with_val_losses(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage summaries with `final_val_loss` (last `val/loss` of the stage's metrics.jsonl, None when
    the stage did not validate) added."""
    out = []
    for s in stages:
        _, val = read_losses(s["output_dir"], "val/loss")
        out.append({**s, "final_val_loss": val[-1] if val else None})
    return out


def eval_summary(per_bench: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers of one mode: accuracies, grounding mIoU/R@0.5, mean pair density, KV kept ratio."""
    m = {b: r["metrics"] for b, r in per_bench.items()}
    out: dict[str, Any] = {}
    if "mcq" in m:
        out["mcq_accuracy"] = m["mcq"]["accuracy"]
    if "grounding" in m:
        out["grounding_miou"] = m["grounding"]["miou"]
        out["grounding_R@0.5"] = m["grounding"]["R@0.5"]
    if "niah" in m:
        out["needle_accuracy"] = m["niah"]["accuracy"]
    n = {b: int(v["n"]) for b, v in m.items()}
    total = sum(n.values())
    inf = {b: v["inference"] for b, v in m.items()}
    out["pair_density"] = sum(inf[b]["pair_density"] * n[b] for b in m) / total
    kept = sum(inf[b]["kept_kv_bytes"] * n[b] for b in m)
    full = sum(inf[b]["full_kv_bytes"] * n[b] for b in m)
    out["kv_kept_ratio"] = kept / full
    out["n"] = n
    return out


def gaps(evals: dict[str, dict[str, Any]], ref: str = "full") -> dict[str, dict[str, float]]:
    """Per mode other than `ref`: ``ref - mode`` in points (x100) for every headline score."""
    keys = ("mcq_accuracy", "grounding_miou", "grounding_R@0.5", "needle_accuracy")
    out: dict[str, dict[str, float]] = {}
    for mode, s in evals.items():
        if mode != ref and ref in evals:
            out[mode] = {k: 100.0 * (evals[ref][k] - s[k]) for k in keys if k in s and k in evals[ref]}
    return out


def goals(evals: dict[str, dict[str, Any]], gap: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Which proof-of-learning goals are met (every mode must meet the score goals)."""
    out: dict[str, Any] = {}
    for key, bar in GOALS.items():
        values = [s[key] for s in evals.values() if key in s]
        out[key] = {"goal": bar, "worst": min(values) if values else None,
                    "met": bool(values) and min(values) >= bar}
    worst_gap = max((abs(v) for g in gap.values() for v in g.values()), default=0.0)
    out["sparse_gap_points"] = {"goal": MAX_GAP_POINTS, "worst": worst_gap, "met": worst_gap <= MAX_GAP_POINTS}
    return out


def sparse_modes(cfg: DictConfig) -> list[str]:
    """The evaluation modes that prefill in chunks (`eval.modes[*].prefill == chunked`)."""
    return [str(m) for m, spec in cfg.eval.modes.items() if spec.prefill == "chunked"]


def long_video_goals(cfg: DictConfig, summary: dict[str, dict[str, Any]],
                     long_summary: dict[str, dict[str, Any]], sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Goals of the long-video proof, checked on the sparse modes: needle accuracy at every sweep length,
    pair density and KV kept at the longest length, grounding on the long held-out videos; and the size of
    the test split (every bench of every mode has at least MIN_SAMPLES_PER_GAP samples per MAX_GAP_POINTS)."""
    modes = sparse_modes(cfg)
    out: dict[str, Any] = {}
    rows = [r for r in sweep if r["mode"] in modes]
    if rows:
        worst = min(r["accuracy"] for r in rows)
        out["sweep_needle_accuracy"] = {"goal": LONG_GOALS["sweep_needle_accuracy"], "worst": worst,
                                        "met": worst >= LONG_GOALS["sweep_needle_accuracy"]}
        longest = max(r["frames"] for r in rows)
        for key, bar in LONGEST_SWEEP_MAX.items():
            values = [r[key] for r in rows if r["frames"] == longest and r.get(key) is not None]
            worst = max(values) if values else None
            out[f"{key}_at_{longest}_frames"] = {"goal": f"<= {bar}", "worst": worst,
                                                 "met": worst is not None and worst <= bar}
    values = [long_summary[m]["grounding_miou"] for m in modes if "grounding_miou" in long_summary.get(m, {})]
    if long_summary:
        worst = min(values) if values else None
        out["long_grounding_miou"] = {"goal": LONG_GOALS["long_grounding_miou"], "worst": worst,
                                      "met": worst is not None and worst >= LONG_GOALS["long_grounding_miou"]}
    need = int(round(MIN_SAMPLES_PER_GAP * 100.0 / MAX_GAP_POINTS))
    fewest = min((n for s in summary.values() for n in s["n"].values()), default=0)
    out["test_samples_per_bench"] = {"goal": f">= {need}", "worst": fewest, "met": fewest >= need}
    return out


def build_metrics(cfg: DictConfig, manifest: dict[str, Any], stages: list[dict[str, Any]],
                  evals: dict[str, dict[str, Any]], sweep: list[dict[str, Any]], walls: dict[str, float],
                  blind: dict[str, float], long_evals: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The metrics.json content (`blind`: scores of a video-free guesser, see demo.evaluate.blind_baseline;
    `long_evals`: ``{mode: {bench: ...}}`` on the long videos' test split)."""
    summary = {mode: eval_summary(b) for mode, b in evals.items()}
    long_summary = {mode: eval_summary(b) for mode, b in (long_evals or {}).items()}
    gap = gaps(summary)
    return {
        "seed": int(cfg.seed), "data_seed": int(cfg.data.seed),
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "data": {s: {k: v for k, v in info.items() if k != "shards"} for s, info in manifest["splits"].items()},
        "stages": with_val_losses(stages), "eval": summary, "blind_baseline": blind, "gap_points": gap,
        "goals": {**goals(summary, gap), **long_video_goals(cfg, summary, long_summary, sweep)},
        "eval_detail": {mode: {b: r["metrics"] for b, r in per.items()} for mode, per in evals.items()},
        "eval_long": long_summary,
        "eval_long_detail": {mode: {b: r["metrics"] for b, r in per.items()} for mode, per in (long_evals or {}).items()},
        "sweep": sweep, "wall_s": walls,
    }


def write_report(out: Path, cfg: DictConfig, manifest: dict[str, Any], stages: list[dict[str, Any]],
                 evals: dict[str, dict[str, Any]], sweep: list[dict[str, Any]], walls: dict[str, float],
                 blind: dict[str, float], long_evals: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write metrics.json, the plots and report.md under `out`; returns the metrics."""
    from demo.plots import plot_all

    metrics = build_metrics(cfg, manifest, stages, evals, sweep, walls, blind, long_evals)
    metrics["plots"] = plot_all(out, metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(metrics), encoding="utf-8")
    return metrics


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100.0 * v:.1f}%"


def _batch(s: dict[str, Any]) -> str:
    """A stage's global batch: samples, or for a packed stage its rows, their token limit and the mean samples
    per step (``samples`` / ``steps``)."""
    if not s.get("packed_tokens"):
        return str(s["batch"])
    per_step = s["samples"] / s["steps"] if s.get("samples") and s["steps"] else None
    mean = "" if per_step is None else f", {per_step:.1f} samples"
    return f"{s['batch']} rows ≤ {s['packed_tokens']} tokens{mean}"


def stage_table(stages: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of the stages table (a packed stage's batch is its rows: see `_batch`)."""
    rows = ["| stage | steps | batch | frames ≤ | trainable | lr | first loss | final loss | final val loss | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in stages:
        lrs = ", ".join(f"{k} {v:g}" for k, v in s["lr"].items())
        rows.append(f"| {s['stage']} | {s['steps']} | {_batch(s)} | {s['frames_upbound']} | "
                    f"{', '.join(s['trainable'])} | {lrs} | {_f(s['first_loss'])} | {_f(s['final_loss'])} | "
                    f"{_f(s.get('final_val_loss'))} | {s['wall_s']:.1f} |")
    return rows


def eval_table(evals: dict[str, dict[str, Any]], blind: dict[str, float] | None = None) -> list[str]:
    """Markdown rows of the evaluation table (one row per inference mode, then the video-free baseline)."""
    rows = ["| mode | MCQ acc | grounding mIoU | grounding R@0.5 | needle acc | mean pair density | KV kept ratio |",
            "|---|---|---|---|---|---|---|"]
    for mode, s in evals.items():
        rows.append(f"| {mode} | {_pct(s.get('mcq_accuracy'))} | {_f(s.get('grounding_miou'))} | "
                    f"{_pct(s.get('grounding_R@0.5'))} | {_pct(s.get('needle_accuracy'))} | "
                    f"{_f(s['pair_density'])} | {_f(s['kv_kept_ratio'])} |")
    if blind is not None:
        rows.append(f"| blind (no video) | {_pct(blind['mcq_accuracy'])} | {_f(blind['grounding_miou'])} | – | "
                    f"{_pct(blind['needle_accuracy'])} | – | – |")
    return rows


def sweep_table(sweep: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of the needle sweep (one row per length and mode)."""
    rows = ["| frames | mode | needle acc | n | prompt tokens | pair density | KV kept ratio | KV kept / full bytes | "
            "prefill s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sweep:
        rows.append(f"| {r['frames']} | {r['mode']} | {_pct(r['accuracy'])} | {r['n']} | {_f(r['prompt_tokens'], 0)} | "
                    f"{_f(r['pair_density'])} | {_f(r.get('kv_kept_ratio'))} | {_f(r['kept_kv_bytes'], 0)} / "
                    f"{_f(r['full_kv_bytes'], 0)} | {_f(r['prefill_seconds'])} |")
    return rows


def render_markdown(m: dict[str, Any]) -> str:
    """report.md text."""
    s = m["settings"]
    lines = ["# Video-XL-2 tiny demo: four stages, evaluation, efficiency", "",
             f"Seed **{m['seed']}** (training), data seed **{m['data_seed']}**, model preset `{s['model']}`, "
             f"total wall {m['wall_s']['total']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in m["wall_s"].items()
                                                          if k != "total") + ").", "",
             "## Data (generated, data.synth)", "", "| split | videos | images | samples | tasks |", "|---|---|---|---|---|"]
    for split, info in m["data"].items():
        lines.append(f"| {split} | {info['videos']} | {info['images']} | {info['samples']} | {info['tasks']} |")
    lines += ["", f"Videos of {s['data']['min_frames']}–{s['data']['max_frames']} frames at 1 fps, "
              f"{s['data']['size']}×{s['data']['size']} px, options {s['data'].get('option_order', 'shuffled')}; each video "
              "yields caption, MCQ, grounding, (when it has one) needle and, if listed, a multi-turn `qa` sample "
              "(training only); splits never share a video.", "",
              "## Training stages", "", *stage_table(m["stages"]), "",
              f"Trained by {m['stages'][0].get('ranks', 1)} rank(s) (`ranks` in demo/demo.yaml); batch is the global "
              "batch of a step. Validation loss: the stage's loss over the whole val split (`loop.eval_every_steps` "
              "in demo/demo.yaml, and at the last step).", "", "![loss curves](loss_curves.png)", "",
              "## Evaluation on the held-out test split", "",
              "`full`: full attention prefill and full KV decoding; `sparse`: chunked prefill + bi-level decoding "
              f"(inference knobs {s['eval']['inference']}).", "", *eval_table(m["eval"], m.get("blind_baseline")), "",
              "`blind`: the most frequent training answer of each question family (letter) or the most frequent "
              "training span, scored on the same test samples without looking at the video.", "",
              "Gap full − sparse (points): " + "; ".join(
                  f"{mode}: " + ", ".join(f"{k} {v:+.1f}" for k, v in g.items()) for mode, g in m["gap_points"].items()),
              "", "| goal | bar | worst over modes | blind (no video) | met |", "|---|---|---|---|---|"]
    blind = m.get("blind_baseline") or {}
    for key, g in m["goals"].items():
        lines.append(f"| {key} | {g['goal']} | {_f(g['worst'])} | {_f(blind.get(key))} | {'yes' if g['met'] else 'no'} |")
    lines += ["", "The sweep, pair-density, KV-kept and long-grounding goals count the chunked-prefill modes only; "
              "`test_samples_per_bench` is the fewest samples of any bench and mode."]
    if m.get("eval_long"):
        long_frames = s.get("long_data") or {}
        lines += ["", f"## Grounding on long held-out videos ({long_frames.get('min_frames')}–"
                  f"{long_frames.get('max_frames')} frames)", "",
                  "The test split of the long-video set (`long_data` in demo/demo.yaml), read with the same "
                  "evaluation settings as the main test split.", "", *eval_table(m["eval_long"])]
    lines += ["", "![accuracy by video length](accuracy_by_length.png)", "",
              "## Needle sweep over video length (longer than any training video)", "",
              *sweep_table(m["sweep"]), "", "![KV bytes and pair density vs frames](efficiency_vs_frames.png)", "",
              "Files: `metrics.json` (all numbers above), `eval/*.json` + `eval/*.predictions.jsonl` (per-sample "
              "records), `runs/<stage>/metrics.jsonl` (per-step training metrics), `runs/<stage>/export/`.", ""]
    return "\n".join(lines)


def print_summary(m: dict[str, Any]) -> None:
    """Short summary table on stdout."""
    print("\n" + "\n".join(stage_table(m["stages"])))
    print("\n" + "\n".join(eval_table(m["eval"], m.get("blind_baseline"))))
    if m.get("eval_long"):
        print("long videos:\n" + "\n".join(eval_table(m["eval_long"])))
    print("\n".join(sweep_table(m["sweep"])))
    for key, g in m["goals"].items():
        print(f"  {key:<18} worst {_f(g['worst'])}  goal {g['goal']}  {'met' if g['met'] else 'NOT met'}")
    print(f"seed {m['seed']} (data seed {m['data_seed']}); wall: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in m["wall_s"].items()))
    print(f"report: {Path(m['settings']['out']) / 'report.md'}")
