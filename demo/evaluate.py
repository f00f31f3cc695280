"""The demo's evaluation: every bench in every inference mode, and a needle sweep over length; the
modes run at once in spawned processes (`eval.workers`).

Uses the `evaluation.runner` API per sample (so the demo can show a progress bar) and writes the same
files as `python -m evaluation`: ``<name>.json`` (metrics + settings) and
``<name>.predictions.jsonl`` (one record per sample).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from demo.overrides import flatten, hydra_value
from evaluation.runner import evaluate_sample, load_samples, resolve_protocol, to_eval_config, write_outputs

EVAL_CONF = Path(__file__).resolve().parents[1] / "conf" / "eval"


def compose_eval(overrides: list[str]) -> DictConfig:
    """conf/eval/evaluate.yaml composed with `overrides`."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(EVAL_CONF), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def mode_overrides(ecfg: DictConfig, mode: str) -> list[str]:
    """Overrides of one inference mode (`eval.modes[mode]`, plus the sparse knobs)."""
    spec = ecfg.modes[mode]
    out = [f"prefill={spec.prefill}", f"decode={spec.decode}"]
    return out + flatten({"setting": {"inference": OmegaConf.to_container(ecfg.inference)}})


def run_bench(ckpt: Path, data: Path, bench: str, mode: str, ecfg: DictConfig, out_dir: Path,
              extra: list[str], model: Any, tokenizer: Any, name: str | None = None,
              bar_position: int = 0, visual_cache: Any = None) -> dict[str, Any]:
    """Evaluate one bench in one mode; returns the metrics dict written to ``<out_dir>/<name>.json``
    (`bar_position`: the line of its progress bar, one per process evaluating at once; `visual_cache`: a
    `model.inference.VisualCache` shared by the benches of one mode, which ask about the same videos)."""
    name = name or f"{bench}_{mode}"
    overrides = [f"ckpt={ckpt}", f"data={data}", f"bench={bench}", f"setting={ecfg.setting}",
                 f"split={ecfg.split}", f"limit={hydra_value(ecfg.limit)}", f"work_dir={out_dir / 'videos' / name}",
                 f"out={out_dir / (name + '.json')}", "device=cpu",
                 *flatten(ecfg.overrides), *mode_overrides(ecfg, mode), *extra]
    cfg = to_eval_config(compose_eval(overrides))
    protocol = resolve_protocol(cfg)
    start = time.perf_counter()
    loaded = load_samples(cfg, Path(str(cfg.work_dir)))
    records = []
    with torch.inference_mode():
        for s in tqdm(loaded.samples, desc=f"eval {name}", dynamic_ncols=True, leave=False, position=bar_position):
            records.append(evaluate_sample(model, tokenizer, s, cfg, torch.device("cpu"), protocol, visual_cache))
    settings = asdict(cfg)
    settings.update({"world_size": 1, "device_resolved": "cpu", "sampling_base_fps": 1.0, "greedy": True,
                     "sample_order": [s.sample_id for s in loaded.samples]})
    out = Path(cfg.out)
    return write_outputs(records, settings, out, out.with_name(out.stem + ".predictions.jsonl"),
                         list(cfg.length_buckets), time.perf_counter() - start, cfg.format, loaded, protocol)


@dataclass(frozen=True)
class ModeJob:
    """Everything one inference mode is evaluated on: the main test split (`ecfg.benches`), the long
    videos' test split (`ecfg.long_benches`, when `long_data` is set) and the needle sweep lengths
    (`sweep_dirs`: ``{frames: shard dir}``, each read at up to the longest length's frames)."""

    ckpt: Path
    mode: str
    ecfg: DictConfig
    data: Path
    long_data: Path | None
    sweep_dirs: dict[int, Path]
    out_dir: Path
    threads: int
    bar_position: int = 0


def evaluate_mode(job: ModeJob) -> dict[str, Any]:
    """Run one ModeJob in this process (on `job.threads` torch threads): ``{"main": {bench: metrics},
    "long": {bench: metrics}, "sweep": [row per length], "sweep_s": wall seconds of the sweep}``."""
    from model import VideoXL2ForCausalLM, load_tokenizer
    from model.inference import VisualCache

    torch.set_num_threads(job.threads)
    model = VideoXL2ForCausalLM.from_pretrained(str(job.ckpt), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(str(job.ckpt))
    eval_dir = job.out_dir / "eval"
    # the benches ask about the same test videos (MCQ and grounding about every one, the needle about half)
    cache_mb = int(job.ecfg.get("visual_cache_mb", 0))
    cache = VisualCache(cache_mb * 2**20) if cache_mb else None
    main = {str(b): run_bench(job.ckpt, job.data, str(b), job.mode, job.ecfg, eval_dir, [], model, tokenizer,
                              bar_position=job.bar_position, visual_cache=cache) for b in job.ecfg.benches}
    long: dict[str, Any] = {}
    if job.long_data is not None:
        for b in job.ecfg.long_benches:
            long[str(b)] = run_bench(job.ckpt, job.long_data, str(b), job.mode, job.ecfg, eval_dir, [], model,
                                     tokenizer, name=f"{b}_long_{job.mode}", bar_position=job.bar_position)
    start, rows = time.perf_counter(), []
    extra = [f"setting.frames_upbound={max(job.sweep_dirs, default=0)}", "limit=null"]
    for frames, shards in job.sweep_dirs.items():
        m = run_bench(job.ckpt, shards, "niah", job.mode, job.ecfg, job.out_dir / "sweep", extra, model, tokenizer,
                      name=f"niah_{frames}f_{job.mode}", bar_position=job.bar_position)["metrics"]
        rows.append(sweep_row(frames, job.mode, m))
    return {"main": main, "long": long, "sweep": rows, "sweep_s": time.perf_counter() - start}


def evaluate_modes(jobs: list[ModeJob], workers: int) -> list[dict[str, Any]]:
    """evaluate_mode for every job, in `workers` spawned processes at once (1: in this process, in order);
    results in the order of `jobs`."""
    if workers <= 1 or len(jobs) <= 1:
        return [evaluate_mode(j) for j in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(evaluate_mode, jobs))


def sweep_row(frames: int, mode: str, m: dict[str, Any]) -> dict[str, Any]:
    """One needle-sweep record (metrics.json `sweep`) from a niah bench's metrics at `frames` frames."""
    inf = m["inference"]
    return {"frames": frames, "mode": mode, "accuracy": m["accuracy"], "n": m["n"],
            "pair_density": inf.get("pair_density"), "kv_kept_ratio": inf.get("kv_ratio_pooled"),
            "kept_kv_bytes": inf.get("kept_kv_bytes"), "full_kv_bytes": inf.get("full_kv_bytes"),
            "prompt_tokens": inf.get("prompt_tokens"), "prefill_seconds": inf.get("prefill_seconds")}


SWEEP_INHERITED = ("size", "fps", "quantum", "option_order", "max_objects", "object_scale", "object_speed")


def make_sweep_data(scfg: DictConfig, data: DictConfig, root: Path) -> dict[int, Path]:
    """Needle-only test shards of exactly `frames` frames per length: ``{frames: shard dir}``. The scenes
    look like the training data's (`data`: frame size, fps, objects, option order; see SWEEP_INHERITED)."""
    from data.synth import SynthConfig, generate

    inherited = {k: data[k] for k in SWEEP_INHERITED if k in data}
    dirs: dict[int, Path] = {}
    n = int(scfg.videos_per_length)
    for frames in scfg.frames:
        out = root / f"frames_{int(frames)}"
        if not (out / "manifest.json").is_file():
            # test takes n of n + 1 videos (the single train video is never read)
            generate(SynthConfig(out=str(out), videos=n + 1, images=0, seed=int(scfg.seed) + int(frames),
                                 min_frames=int(frames), max_frames=int(frames), val_frac=0.0,
                                 test_frac=n / (n + 1) - 1e-6, needle_prob=1.0, tasks=("needle",), **inherited))
        dirs[int(frames)] = out
    return dirs


def _records(data: Path, split: str, tasks: tuple[str, ...]) -> list[dict[str, Any]]:
    """The json records of `split` whose task is in `tasks` (media bytes are read but not decoded)."""
    import json

    from data.shards import iter_shard

    out = []
    for shard in sorted(data.glob(f"{split}-*.tar")):
        for raw in iter_shard(str(shard)):
            rec = json.loads(raw.members["json"])
            if rec["task"] in tasks:
                out.append(rec)
    return out


def blind_baseline(data: Path) -> dict[str, float]:
    """Scores without looking at the video: per question family the most frequent train letter
    (mcq, needle) and the most frequent train span (grounding), applied to the test split."""
    from collections import Counter

    from evaluation.scoring import temporal_iou

    def family(rec: dict[str, Any]) -> str:
        return f"{rec['task']}/{rec['answer'].get('type', '')}"

    train = _records(data, "train", ("mcq", "needle", "grounding"))
    test = _records(data, "test", ("mcq", "needle", "grounding"))
    letters: dict[str, Counter[str]] = {}
    spans: Counter[tuple[float, float]] = Counter()
    for rec in train:
        if rec["task"] == "grounding":
            spans[tuple(rec["answer"]["span"])] += 1
        else:
            letters.setdefault(family(rec), Counter())[rec["answer"]["letter"]] += 1
    span = spans.most_common(1)[0][0] if spans else (0.0, 0.0)
    scores: dict[str, list[float]] = {"mcq": [], "needle": [], "grounding": []}
    for rec in test:
        if rec["task"] == "grounding":
            scores["grounding"].append(temporal_iou(span, rec["answer"]["span"]))
        else:
            guess = letters.get(family(rec), Counter({"A": 1})).most_common(1)[0][0]
            scores[rec["task"]].append(float(guess == rec["answer"]["letter"]))
    return {"mcq_accuracy": sum(scores["mcq"]) / max(1, len(scores["mcq"])),
            "grounding_miou": sum(scores["grounding"]) / max(1, len(scores["grounding"])),
            "needle_accuracy": sum(scores["needle"]) / max(1, len(scores["needle"]))}
