"""Evaluate a checkpoint on MCQ, temporal grounding or needle-in-a-haystack samples.

    python -m evaluation ckpt=DIR bench=mcq|grounding|niah data=... prefill=full|chunked \
        decode=full|bilevel out=FILE.json [format=synth|records|mlvu|videomme|lvbench|longvideobench|charades
        setting=... setting.protocol=official|lmms-eval strict=false]

(``python -m train.evaluate`` is the same entry point.) The composed Hydra config is checked by
`evaluation.config.parse_eval_config` before anything is loaded. Benchmark files are read with
`data.benchmarks.read_benchmark`; rows it excludes are listed in the metrics JSON with the
denominators. The setting's ``protocol`` picks the prompt (`evaluation.prompts`) and the answer
parser (`evaluation.answers`); both are recorded in the metrics JSON.

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
import tempfile
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.benchmarks import AnnotationError, EvalSample, Exclusion, read_benchmark
from data.faults import SampleFault
from data.sampling import VideoBytes, sample_video_frames
from evaluation.answers import Extractor, extractor_for
from evaluation.config import EvalConfig, parse_eval_config
from evaluation.prompts import PromptSpec, prompt_spec, render
from evaluation.scoring import exclusion_report, score_prediction, summarize
from train.config import ConfigError
from train.engine import DistEnv, read_dist_env, shutdown_distributed

logger = logging.getLogger(__name__)

# What reading one sample's video raises (missing / unreadable file, no decoder can read it); such a
# sample is recorded as failed instead of stopping its rank.
VIDEO_ERRORS: tuple[type[BaseException], ...] = (SampleFault, RuntimeError, ValueError, OSError)


# ------------------------------------------------------------------------------------ data
@dataclass
class LoadedSamples:
    """The samples to evaluate (task-filtered, `limit` applied), what the reader excluded, how many
    samples of the task were read before `limit`, and how many of other eval tasks the file held (the
    reader yields eval samples only: a shard's training-only samples, e.g. captions, are not among them)."""

    samples: list[EvalSample]
    excluded: list[Exclusion] = field(default_factory=list)
    read: int = 0
    other_tasks: int = 0


def load_samples(cfg: EvalConfig, work_dir: Path) -> LoadedSamples:
    """Samples of `cfg.format` at `cfg.data`, filtered to the bench's task, first `cfg.limit` kept.

    Every format is read by `data.benchmarks.read_benchmark` (``strict`` turns any excluded row, and any
    missing video, into an AnnotationError). Raises AnnotationError (naming the file, the excluded rows'
    reasons and the tasks found) when no sample is left; ConfigError naming the field when `data`,
    `video_root` or `durations` is not there, or (`split`) when the synth folder holds no shards of the split.
    """
    fmt = cfg.format
    if not Path(cfg.data).exists():
        raise ConfigError("data", f"no such file or folder {cfg.data}")
    if cfg.video_root and not Path(cfg.video_root).is_dir():
        raise ConfigError("video_root", f"no such folder {cfg.video_root}")
    if cfg.durations and not Path(cfg.durations).is_file():
        raise ConfigError("durations", f"no such file {cfg.durations}")
    try:
        if fmt == "synth":  # shard videos are extracted under work_dir
            read = read_benchmark(fmt, cfg.data, work_dir / "videos", strict=cfg.strict, split=cfg.split)
        else:
            opts = {"durations": cfg.durations} if cfg.durations else {}
            read = read_benchmark(fmt, cfg.data, cfg.video_root, strict=cfg.strict, **opts)
    except FileNotFoundError as exc:  # synth: no shards of `split` (of any split: `data` is the wrong folder)
        has_shards = fmt == "synth" and any(Path(cfg.data).glob("*-*.tar"))
        raise ConfigError("split" if has_shards else "data", str(exc)) from exc
    samples, excluded = list(read.samples), list(read.excluded)
    missing = [s for s in samples if s.metadata.get("video_missing")]
    if cfg.strict and missing:
        raise AnnotationError(cfg.data, f"sample {missing[0].sample_id}", "video",
                              f"no video at {missing[0].video} ({len(missing)} missing; strict=true)")
    tasks = sorted({s.task for s in samples})
    n_all = len(samples)
    samples = [s for s in samples if s.task == cfg.task]
    n_read = len(samples)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    if not samples:
        why = [f"{len(excluded)} rows excluded ({_count_reasons(excluded)}; "
               f"`python -m data.benchmarks` lists them)"] if excluded else []
        if tasks:
            why.append(f"the file's tasks are {tasks}")
        detail = f": {', '.join(why)}" if why else ""
        raise AnnotationError(cfg.data, None, None, f"no '{cfg.task}' samples (format={fmt}){detail}")
    return LoadedSamples(samples, excluded, n_read, n_all - n_read)


def _count_reasons(excluded: list[Exclusion]) -> str:
    """"reason N, ..." of excluded rows, most frequent first."""
    counts: dict[str, int] = {}
    for e in excluded:
        counts[e.reason] = counts.get(e.reason, 0) + 1
    return ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def read_video(path: str, frames_upbound: int, fps_upbound: float | None,
               group: int) -> tuple[np.ndarray, list[float], float]:
    """Decode the sampled frames of `path`: (uint8 [N, H, W, 3] with N % group == 0, group timestamps, duration s).

    Frames are read by the training loader's decoder chain (decord, then PyAV). A missing file raises
    FileNotFoundError, one no decoder can read a SampleFault ("unsupported codec av1 in <file>" or the
    decoders' reasons), one without frames RuntimeError (each names the file).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        # the training loader's decoder chain: decord, then PyAV for what decord cannot open (AV1, GIF, ...)
        video = VideoBytes(Path(path).read_bytes(), path)
        n, fps = video.num_frames, video.avg_fps
        picked = sample_video_frames(n, fps, frames_upbound=frames_upbound, fps_upbound=fps_upbound, group=group)
        frames = video.read(picked.indices)
    except ValueError as exc:  # no frames / no frame rate
        raise RuntimeError(f"cannot decode video {path}: {str(exc)[:200]}") from exc
    return frames, picked.group_timestamps(group), n / fps


def read_sample_video(sample: EvalSample, model_cfg: Any, setting: Any) -> tuple[np.ndarray, list[float], float]:
    """`read_video` of `sample` with the setting's frame limits and the model's group size."""
    return read_video(sample.video, int(setting.frames_upbound), setting.fps_upbound, int(model_cfg.frames_per_group))


def build_inputs(sample: EvalSample, prompt: str, tokenizer: Any, model_cfg: Any, setting: Any,
                 video: tuple[np.ndarray, list[float], float] | None = None, spec: PromptSpec | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, Any, dict[str, Any]]:
    """(input_ids [1, L], pixel_values [F, 3, S, S], layout, info) for one sample.

    `prompt` is the user text after ``<image>\n``; `spec` (optional) adds its system prompt and its
    assistant-turn prefix (appended after ``<|im_start|>assistant\n`` as question tokens). Without a
    protocol system prompt, a record's leading ``system`` turn (``metadata["system_prompt"]``) is used,
    as it was in training.
    `video` is the sample's `read_sample_video` result when already decoded (decoded here otherwise).
    """
    from model.inference.layout import VideoLayout
    from model.processing import preprocess_frames
    from model.sequence import TokenKind, build_sequence

    group = int(model_cfg.frames_per_group)
    frames, timestamps, duration = video if video is not None else read_sample_video(sample, model_cfg, setting)
    # the protocol's system prompt, else the record's own leading system turn, else the model default
    system = spec.system if spec is not None and spec.system is not None else sample.metadata.get("system_prompt")
    extra = {"system_prompt": system} if isinstance(system, str) else {}
    prefix_ids = (tokenizer.encode(spec.response_prefix, add_special_tokens=False)
                  if spec is not None and spec.response_prefix else [])
    budget = None if setting.max_length is None else int(setting.max_length) - len(prefix_ids)
    built = build_sequence(tokenizer, [{"from": "human", "value": "<image>\n" + prompt}], timestamps,
                           num_groups=len(timestamps), tokens_per_group=int(model_cfg.tokens_per_group),
                           for_generation=True, max_length=budget, **extra)
    input_ids, token_kind, group_index = built.input_ids, built.token_kind, built.group_index
    if prefix_ids:
        n = len(prefix_ids)
        input_ids = torch.cat([input_ids, torch.tensor(prefix_ids, dtype=input_ids.dtype)])
        token_kind = torch.cat([token_kind, torch.full((n,), int(TokenKind.QUESTION), dtype=token_kind.dtype)])
        group_index = torch.cat([group_index, torch.full((n,), -1, dtype=group_index.dtype)])
    frames = frames[: built.num_groups * group]
    pixel_values = preprocess_frames(frames, int(model_cfg.image_size), model_cfg.image_mean, model_cfg.image_std)
    layout = VideoLayout.from_tensors(token_kind, group_index)
    info = {"duration": duration, "num_frames": int(len(frames)), "num_groups": int(built.num_groups),
            "prompt_tokens": int(input_ids.numel())}
    return input_ids.unsqueeze(0), pixel_values, layout, info


def numeric_stats(stats: Any) -> dict[str, float]:
    """Scalar numeric fields of a GenerationResult.stats (dataclass or mapping)."""
    if hasattr(stats, "as_dict"):
        raw = stats.as_dict()
    else:
        raw = asdict(stats) if is_dataclass(stats) else dict(stats or {})
    return {k: float(v) for k, v in raw.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def _base_record(sample: EvalSample, prompt: str, text: str, token_ids: list[int], info: dict[str, Any],
                 stats: dict[str, float], extractor: Extractor | None = None) -> dict[str, Any]:
    """The prediction record of one sample, scored from `text` with `extractor` (default: official)."""
    record: dict[str, Any] = {
        "id": sample.sample_id, "source": sample.source, "task": sample.task, "video": sample.video,
        "question": sample.question,
        "prompt": prompt, "prediction": text, "token_ids": token_ids, "answer": sample.answer,
        "span": list(sample.span) if sample.span else None, "letters": sample.letters, **info,
        "stats": stats, "metadata": sample.metadata,
    }
    if sample.task == "needle":
        record["depth"] = float(sample.metadata["depth"])
        record["length"] = float(sample.metadata.get("length", info["duration"]))
    record.update(score_prediction(sample.task, text, sample.answer, sample.span, sample.letters, extractor))
    return record


def failed_record(sample: EvalSample, prompt: str, exc: BaseException,
                  extractor: Extractor | None = None) -> dict[str, Any]:
    """Record of a sample whose video could not be read: ``error`` set, scored as an unparsed answer."""
    info = {"duration": float(sample.duration or 0.0), "num_frames": 0, "num_groups": 0, "prompt_tokens": 0}
    record = _base_record(sample, prompt, "", [], info, {}, extractor)
    record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return record


@dataclass(frozen=True)
class Protocol:
    """The prompt and the answer parser of one (format, protocol) pair."""

    name: str
    prompt: PromptSpec
    extractor: Extractor

    def as_dict(self) -> dict[str, Any]:
        """What the metrics JSON records: protocol name, every prompt template, the parser's name."""
        return {"name": self.name, "prompt": self.prompt.as_dict(), "extraction": self.extractor.name}


def resolve_protocol(cfg: EvalConfig) -> Protocol:
    """The `Protocol` of `cfg.setting.protocol` for `cfg.format` and the bench's task."""
    name = cfg.setting.protocol
    return Protocol(name, prompt_spec(cfg.format, name, cfg.bench.template),
                    extractor_for(name, cfg.format, cfg.task))


def evaluate_sample(model: Any, tokenizer: Any, sample: EvalSample, cfg: EvalConfig, device: torch.device,
                    protocol: Protocol | None = None, visual_cache: Any = None) -> dict[str, Any]:
    """Generate greedily for one sample and return its prediction record (`visual_cache`: a
    `model.inference.VisualCache` shared by the samples of a run, so a video asked about again is not
    encoded again; the record is the same with or without it).

    A video that cannot be read (or is missing) gives a `failed_record` (logged) instead of an
    exception, so one bad file never stops a rank while the others wait in the gather.
    """
    from model.inference import generate_video

    protocol = protocol or resolve_protocol(cfg)
    prompt = render(protocol.prompt, sample)
    try:
        video = read_sample_video(sample, model.config, cfg.setting)
    except VIDEO_ERRORS as exc:
        logger.warning("sample %s: video unreadable, recorded as failed: %s", sample.sample_id, exc)
        return failed_record(sample, prompt, exc, protocol.extractor)
    input_ids, pixel_values, layout, info = build_inputs(sample, prompt, tokenizer, model.config, cfg.setting,
                                                         video, protocol.prompt)
    opts = cfg.setting.inference
    result = generate_video(model, input_ids.to(device), pixel_values.to(device=device, dtype=model.dtype), layout,
                            prefill=cfg.prefill, decode=cfg.decode, max_new_tokens=cfg.bench.max_new_tokens,
                            chunk_groups=opts.chunk_groups, prev_chunks=opts.prev_chunks, top_k=opts.top_k,
                            kv_pool=opts.kv_pool, visual_cache=visual_cache)
    token_ids = [int(t) for t in torch.as_tensor(result.token_ids).reshape(-1).tolist()]
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return _base_record(sample, prompt, text, token_ids, info, numeric_stats(result.stats), protocol.extractor)


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
                  predictions: Path, edges: list[float], seconds: float, benchmark: str | None = None,
                  loaded: LoadedSamples | None = None, protocol: Protocol | None = None) -> dict[str, Any]:
    """Write the predictions JSONL and the metrics JSON; return the metrics dict.

    The metrics JSON holds ``metrics`` (`summarize` with `benchmark`'s breakdowns), ``protocol``
    (name, prompt templates, parser), ``excluded``/``failed``/``denominators`` (`exclusion_report`),
    ``settings``, ``predictions`` (path), ``num_samples`` and ``wall_seconds``.
    """
    order = {sid: i for i, sid in enumerate(settings["sample_order"])}
    records = sorted(records, key=lambda r: order[r["id"]])
    predictions.parent.mkdir(parents=True, exist_ok=True)
    with predictions.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    report = exclusion_report(loaded.excluded if loaded else [], records, loaded.read if loaded else None,
                              loaded.other_tasks if loaded else 0)
    metrics = {"metrics": summarize(records, edges, benchmark),
               "protocol": protocol.as_dict() if protocol else None, **report,
               "settings": {k: v for k, v in settings.items() if k != "sample_order"},
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


def to_eval_config(cfg: Any) -> EvalConfig:
    """An `EvalConfig` from a composed OmegaConf config (or a plain mapping, or an EvalConfig)."""
    if isinstance(cfg, EvalConfig):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return parse_eval_config(raw)


def run(cfg: Any) -> dict[str, Any] | None:
    """Evaluate per `cfg` (see conf/eval/evaluate.yaml); returns the metrics on rank 0, None elsewhere.

    Raises ConfigError for a bad config (before loading anything) and AnnotationError for an unreadable
    benchmark file or, with ``strict``, any excluded row or missing video; ModelFileError for a `ckpt`
    whose config, weights or tokenizer files are missing, truncated or of the wrong architecture.
    """
    from model import VideoXL2ForCausalLM, load_tokenizer
    from model.checks import check_videoxl2_dir
    from model.inference import VisualCache

    ecfg = to_eval_config(cfg)
    try:
        protocol = resolve_protocol(ecfg)
    except ValueError as exc:
        raise ConfigError("setting.protocol", str(exc)) from exc
    check_videoxl2_dir(str(ecfg.ckpt), tokenizer=True, what="ckpt")  # one-line ModelFileError before any compute
    info = read_dist_env()
    if info.world_size > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size)
    start = time.perf_counter()
    device = setup_device(ecfg.device, info)
    with tempfile.TemporaryDirectory(prefix=f"eval-r{info.rank}-") as tmp:
        work = Path(ecfg.work_dir) / f"rank{info.rank}" if ecfg.work_dir else Path(tmp)
        loaded = load_samples(ecfg, work)  # annotation errors surface before the weights are loaded
        model = VideoXL2ForCausalLM.from_pretrained(ecfg.ckpt, dtype=getattr(torch, ecfg.dtype)).to(device).eval()
        tokenizer = load_tokenizer(ecfg.ckpt)
        mine = loaded.samples[info.rank::info.world_size]
        cache = VisualCache(ecfg.visual_cache_mb * 2**20) if ecfg.visual_cache_mb else None
        with torch.inference_mode():
            records = [evaluate_sample(model, tokenizer, s, ecfg, device, protocol, cache) for s in mine]
    merged = gather_records(records, info)
    metrics = None
    if merged is not None:
        out = Path(ecfg.out)
        pred = Path(ecfg.predictions) if ecfg.predictions else out.with_name(out.stem + ".predictions.jsonl")
        settings = asdict(ecfg)
        settings.update({"world_size": info.world_size, "device_resolved": str(device), "sampling_base_fps": 1.0,
                         "greedy": True, "sample_order": [s.sample_id for s in loaded.samples]})
        metrics = write_outputs(merged, settings, out, pred, list(ecfg.length_buckets), time.perf_counter() - start,
                                ecfg.format, loaded, protocol)
    shutdown_distributed()  # the group exists only when world_size > 1
    return metrics


def main() -> None:
    """Hydra entry point (config: conf/eval/evaluate.yaml). A bad config, an unreadable benchmark file or
    a bad `ckpt` directory prints one line naming the field/file and exits 2."""
    import sys

    import hydra

    conf_dir = str(Path(__file__).resolve().parent.parent / "conf" / "eval")

    @hydra.main(config_path=conf_dir, config_name="evaluate", version_base="1.3")
    def _entry(cfg: Any) -> None:
        from model.checks import ModelFileError

        try:
            metrics = run(cfg)
        except (ConfigError, AnnotationError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except ModelFileError as exc:  # bad ckpt / tokenizer files
            print(f"error: ckpt: {exc}", file=sys.stderr)
            sys.exit(2)
        if metrics is not None:
            print(json.dumps(metrics["metrics"], indent=2))

    _entry()


if __name__ == "__main__":
    main()
