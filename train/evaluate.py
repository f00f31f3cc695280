"""Evaluate a checkpoint on MCQ, temporal grounding or needle-in-a-haystack samples.

    python -m train.evaluate ckpt=DIR bench=mcq|grounding|niah data=... prefill=full|chunked \
        decode=full|bilevel out=FILE.json [format=synth|records|mlvu|videomme|lvbench|charades setting=...]

Under ``torchrun`` each rank evaluates the disjoint slice ``samples[rank::world]``; the per-sample
records travel to rank 0 as JSON bytes over a gloo group (nothing is pickled), and rank 0 writes
``predictions`` (JSONL, one record per sample, input order) and ``out`` (metrics + the resolved
settings). Per sample: frames are sampled with `data.sampling` (1 fps, up to ``fps_upbound``,
at most ``frames_upbound``), preprocessed, the generation prompt is built with
`model.sequence.build_sequence(for_generation=True)` and answered greedily by
`model.inference.generate_video`. A sample whose video cannot be read (missing file, undecodable
bytes) does not stop its rank: its record carries an ``error`` field, it is scored as an
unparsed (wrong) answer and counted in the metrics as ``failed``.

Device: ``device=auto`` (or a bare ``cuda``) means ``cuda:$LOCAL_RANK`` when CUDA is available, so
each torchrun rank uses its own GPU; ranks come from `train.engine.read_dist_env`.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.benchmarks import READERS, EvalSample, format_prompt, read_charades_durations, read_synth_shards
from data.sampling import DECORD_ERRORS, sample_video_frames
from train.engine import DistEnv, read_dist_env, shutdown_distributed
from train.metrics import score_prediction, summarize

logger = logging.getLogger(__name__)

BENCH_TASKS = {"mcq": "mcq", "grounding": "grounding", "niah": "needle", "needle": "needle"}
# What reading one sample's video raises (missing / unreadable file, decord decode errors); such a
# sample is recorded as failed instead of stopping its rank.
VIDEO_ERRORS: tuple[type[BaseException], ...] = (*DECORD_ERRORS, ValueError, OSError)


# ------------------------------------------------------------------------------------ data
def load_samples(cfg: Any, work_dir: Path) -> list[EvalSample]:
    """Samples of `cfg.format` at `cfg.data`, filtered to the bench's task, first `cfg.limit` kept."""
    fmt = str(cfg.format)
    if fmt == "synth":
        samples = read_synth_shards(cfg.data, work_dir / "videos", split=str(cfg.split))
    elif fmt == "records":
        samples = READERS["records"](cfg.data, cfg.video_root)
    elif fmt in READERS:
        if not cfg.video_root:
            raise ValueError(f"format={fmt} needs video_root=<folder of the videos>")
        if fmt == "charades":
            durations = read_charades_durations(cfg.durations) if cfg.durations else None
            samples = READERS[fmt](cfg.data, cfg.video_root, durations)
        else:
            samples = READERS[fmt](cfg.data, cfg.video_root)
    else:
        raise ValueError(f"unknown format {fmt!r} (synth | {' | '.join(READERS)})")
    task = BENCH_TASKS[str(cfg.bench.task)]
    samples = [s for s in samples if s.task == task]
    if cfg.limit is not None:
        samples = samples[: int(cfg.limit)]
    if not samples:
        raise ValueError(f"no '{task}' samples in {cfg.data} (format={fmt})")
    return samples


def read_video(path: str, frames_upbound: int, fps_upbound: float | None,
               group: int) -> tuple[np.ndarray, list[float], float]:
    """Decode the sampled frames of `path`: (uint8 [N, H, W, 3] with N % group == 0, group timestamps, duration s).

    A missing file raises FileNotFoundError, an undecodable one RuntimeError (both name the file).
    """
    from decord import VideoReader, cpu

    if not Path(path).is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        vr = VideoReader(path, ctx=cpu(0), num_threads=1)
        n, fps = len(vr), float(vr.get_avg_fps())
        picked = sample_video_frames(n, fps, frames_upbound=frames_upbound, fps_upbound=fps_upbound, group=group)
        frames = vr.get_batch(picked.indices).asnumpy()
    except (*DECORD_ERRORS, ValueError) as exc:  # ValueError: no frames / no frame rate
        raise RuntimeError(f"cannot decode video {path}: {str(exc)[:200]}") from exc
    return frames, picked.group_timestamps(group), n / fps


def read_sample_video(sample: EvalSample, model_cfg: Any, setting: Any) -> tuple[np.ndarray, list[float], float]:
    """`read_video` of `sample` with the setting's frame limits and the model's group size."""
    return read_video(sample.video, int(setting.frames_upbound), setting.fps_upbound, int(model_cfg.frames_per_group))


def build_inputs(sample: EvalSample, prompt: str, tokenizer: Any, model_cfg: Any, setting: Any,
                 video: tuple[np.ndarray, list[float], float] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, Any, dict[str, Any]]:
    """(input_ids [1, L], pixel_values [F, 3, S, S], layout, info) for one sample.

    `video` is the sample's `read_sample_video` result when already decoded (decoded here otherwise).
    """
    from model.inference.layout import VideoLayout
    from model.processing import preprocess_frames
    from model.sequence import build_sequence

    group = int(model_cfg.frames_per_group)
    frames, timestamps, duration = video if video is not None else read_sample_video(sample, model_cfg, setting)
    built = build_sequence(tokenizer, [{"from": "human", "value": "<image>\n" + prompt}], timestamps,
                           num_groups=len(timestamps), tokens_per_group=int(model_cfg.tokens_per_group),
                           for_generation=True, max_length=setting.max_length)
    frames = frames[: built.num_groups * group]
    pixel_values = preprocess_frames(frames, int(model_cfg.image_size), model_cfg.image_mean, model_cfg.image_std)
    layout = VideoLayout.from_tensors(built.token_kind, built.group_index)
    info = {"duration": duration, "num_frames": int(len(frames)), "num_groups": int(built.num_groups),
            "prompt_tokens": len(built)}
    return built.input_ids.unsqueeze(0), pixel_values, layout, info


def numeric_stats(stats: Any) -> dict[str, float]:
    """Scalar numeric fields of a GenerationResult.stats (dataclass or mapping)."""
    if hasattr(stats, "as_dict"):
        raw = stats.as_dict()
    else:
        raw = asdict(stats) if is_dataclass(stats) else dict(stats or {})
    return {k: float(v) for k, v in raw.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def _base_record(sample: EvalSample, prompt: str, text: str, token_ids: list[int], info: dict[str, Any],
                 stats: dict[str, float]) -> dict[str, Any]:
    """The prediction record of one sample, scored from `text`."""
    record: dict[str, Any] = {
        "id": sample.sample_id, "source": sample.source, "task": sample.task, "video": sample.video,
        "prompt": prompt, "prediction": text, "token_ids": token_ids, "answer": sample.answer,
        "span": list(sample.span) if sample.span else None, "letters": sample.letters, **info,
        "stats": stats, "metadata": sample.metadata,
    }
    if sample.task == "needle":
        record["depth"] = float(sample.metadata["depth"])
        record["length"] = float(sample.metadata.get("length", info["duration"]))
    record.update(score_prediction(sample.task, text, sample.answer, sample.span, sample.letters))
    return record


def failed_record(sample: EvalSample, prompt: str, exc: BaseException) -> dict[str, Any]:
    """Record of a sample whose video could not be read: ``error`` set, scored as an unparsed answer."""
    info = {"duration": float(sample.duration or 0.0), "num_frames": 0, "num_groups": 0, "prompt_tokens": 0}
    record = _base_record(sample, prompt, "", [], info, {})
    record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return record


def evaluate_sample(model: Any, tokenizer: Any, sample: EvalSample, cfg: Any, device: torch.device) -> dict[str, Any]:
    """Generate greedily for one sample and return its prediction record.

    A video that cannot be read gives a `failed_record` (logged) instead of an exception, so one bad
    file never stops a rank while the others wait in the gather.
    """
    from model.inference import generate_video

    prompt = format_prompt(sample, str(cfg.bench.template), str(cfg.bench.template))
    try:
        video = read_sample_video(sample, model.config, cfg.setting)
    except VIDEO_ERRORS as exc:
        logger.warning("sample %s: video unreadable, recorded as failed: %s", sample.sample_id, exc)
        return failed_record(sample, prompt, exc)
    input_ids, pixel_values, layout, info = build_inputs(sample, prompt, tokenizer, model.config, cfg.setting, video)
    opts = cfg.setting.inference
    result = generate_video(model, input_ids.to(device), pixel_values.to(device=device, dtype=model.dtype), layout,
                            prefill=str(cfg.prefill), decode=str(cfg.decode),
                            max_new_tokens=int(cfg.bench.max_new_tokens), chunk_groups=int(opts.chunk_groups),
                            prev_chunks=int(opts.prev_chunks), top_k=int(opts.top_k), kv_pool=int(opts.kv_pool))
    token_ids = [int(t) for t in torch.as_tensor(result.token_ids).reshape(-1).tolist()]
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return _base_record(sample, prompt, text, token_ids, info, numeric_stats(result.stats))


# ----------------------------------------------------------------------------- gathering
def gather_records(records: list[dict[str, Any]], info: DistEnv) -> list[dict[str, Any]] | None:
    """All ranks' records on rank 0 (JSON bytes over gloo, no pickling); None on other ranks."""
    if info.world_size == 1:
        return records
    import torch.distributed as dist

    payload = torch.frombuffer(bytearray(json.dumps(records).encode("utf-8")), dtype=torch.uint8)
    size = torch.tensor([payload.numel()], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: payload.numel()] = payload
    bufs = [torch.zeros(longest, dtype=torch.uint8) for _ in range(info.world_size)] if info.rank == 0 else None
    dist.gather(padded, bufs, dst=0)
    if info.rank != 0:
        return None
    merged: list[dict[str, Any]] = []
    for buf, n in zip(bufs or [], sizes, strict=True):
        merged.extend(json.loads(bytes(buf[: int(n)].numpy()).decode("utf-8")))
    return merged


def write_outputs(records: list[dict[str, Any]], settings: dict[str, Any], out: Path,
                  predictions: Path, edges: list[float], seconds: float) -> dict[str, Any]:
    """Write the predictions JSONL and the metrics JSON; return the metrics dict."""
    order = {sid: i for i, sid in enumerate(settings["sample_order"])}
    records = sorted(records, key=lambda r: order[r["id"]])
    predictions.parent.mkdir(parents=True, exist_ok=True)
    with predictions.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    metrics = {"metrics": summarize(records, edges), "settings": {k: v for k, v in settings.items() if k != "sample_order"},
               "predictions": str(predictions), "num_samples": len(records), "wall_seconds": seconds}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


# ---------------------------------------------------------------------------------- main
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else cpu; bare ``cuda`` -> ``cuda:<local_rank>``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup_device(name: str, env: DistEnv) -> torch.device:
    """Resolve `name` for this rank and make a CUDA device the current one (one GPU per local rank)."""
    device = resolve_device(name, env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def run(cfg: Any) -> dict[str, Any] | None:
    """Evaluate per `cfg` (see conf/eval/evaluate.yaml); returns the metrics on rank 0, None elsewhere."""
    from omegaconf import OmegaConf

    from model import VideoXL2ForCausalLM, load_tokenizer
    from model.checks import check_videoxl2_dir

    check_videoxl2_dir(str(cfg.ckpt), tokenizer=True, what="ckpt")  # one-line ModelFileError before any compute
    if str(cfg.bench.task) not in BENCH_TASKS:
        raise ValueError(f"bench.task must be one of {sorted(BENCH_TASKS)}, got {cfg.bench.task!r}")
    if str(cfg.prefill) not in ("full", "chunked") or str(cfg.decode) not in ("full", "bilevel"):
        raise ValueError(f"prefill must be full|chunked and decode full|bilevel, got {cfg.prefill}/{cfg.decode}")
    info = read_dist_env()
    if info.world_size > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size)
    start = time.perf_counter()
    device = setup_device(str(cfg.device), info)
    dtype = getattr(torch, str(cfg.dtype))
    model = VideoXL2ForCausalLM.from_pretrained(str(cfg.ckpt), dtype=dtype).to(device).eval()
    tokenizer = load_tokenizer(str(cfg.ckpt))
    with tempfile.TemporaryDirectory(prefix=f"eval-r{info.rank}-") as tmp:
        work = Path(cfg.work_dir) / f"rank{info.rank}" if cfg.work_dir else Path(tmp)
        samples = load_samples(cfg, work)
        mine = samples[info.rank::info.world_size]
        with torch.inference_mode():
            records = [evaluate_sample(model, tokenizer, s, cfg, device) for s in mine]
    merged = gather_records(records, info)
    metrics = None
    if merged is not None:
        out = Path(str(cfg.out))
        pred = Path(str(cfg.predictions)) if cfg.predictions else out.with_name(out.stem + ".predictions.jsonl")
        settings = OmegaConf.to_container(cfg, resolve=True)
        settings.update({"world_size": info.world_size, "device_resolved": str(device), "sampling_base_fps": 1.0, "greedy": True,
                         "sample_order": [s.sample_id for s in samples]})
        metrics = write_outputs(merged, settings, out, pred, list(cfg.length_buckets), time.perf_counter() - start)
    shutdown_distributed()  # the group exists only when world_size > 1
    return metrics


def main() -> None:
    """Hydra entry point (config: conf/eval/evaluate.yaml)."""
    import hydra

    conf_dir = str(Path(__file__).resolve().parent.parent / "conf" / "eval")

    @hydra.main(config_path=conf_dir, config_name="evaluate", version_base="1.3")
    def _entry(cfg: Any) -> None:
        from model.checks import ModelFileError

        try:
            metrics = run(cfg)
        except ModelFileError as exc:  # bad ckpt / tokenizer files: one line, before any compute
            print(f"error: ckpt: {exc}", file=sys.stderr)
            sys.exit(2)
        if metrics is not None:
            print(json.dumps(metrics["metrics"], indent=2))

    _entry()


if __name__ == "__main__":
    main()
