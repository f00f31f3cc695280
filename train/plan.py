"""Per-GPU memory plan of a training run, and the largest `frames_upbound` that fits.

    python -m train.plan model=videoxl2_7b stage=long deepspeed=zero3 gpus=8 gpu_mem_gb=80 [run overrides]

Composes the run config like `python -m train` (Hydra; the same overrides), plus `gpus=N` (data-parallel
x sequence-parallel ranks, 8 per node) and `gpu_mem_gb=G` (per GPU, decimal GB as GPU vendors state it).

Model states (parameters, gradients, optimizer states) come from DeepSpeed's own estimators
(`estimate_zero2_model_states_mem_needs` for ZeRO 0-2, `estimate_zero3_model_states_mem_needs` for ZeRO-3,
offload read from `deepspeed.zero_optimization.offload_optimizer/offload_param`) applied to the trainable
parameter count, counted on the meta device; frozen parameters add their 16-bit copy (partitioned under
ZeRO-3). DeepSpeed's contiguous gradient bucket (`reduce_bucket_size` elements, two with `overlap_comm`) is
added. The estimators model mixed precision (bf16 weights, fp32 master + Adam); with
`deepspeed.precision=fp32` the same layout is used with 4-byte weights and 16-bit gradients widened to 4 bytes.

Activations are the bytes autograd saves for backward, traced through the real model code at the run's
shapes with FakeTensor (no memory, no compute): vision tower + DTS on the micro-batch's frames, projector,
the LLM on its sequence (packed rows of `loop.packing.max_tokens`, the per-rank share under sequence
parallelism, the 4-D mask chunked visibility adds), the LM head on the supervised tokens; with
`loop.activation_checkpointing` the checkpointed layers keep their inputs and one layer is recomputed at a
time. A backward working set (gradients of the largest saved tensors) is added on top.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.config import ConfigError, RunConfig

GPUS_PER_NODE = 8
SUPERVISED_TOKENS = 256  # answer tokens per sample the LM head runs on (the plan's assumption)
TEXT_TOKENS = 200  # prompt + answer text around the video (system prompt, question, answer, ChatML)


@dataclass
class ModelStates:
    """Bytes per GPU of the model states."""

    parameters: float
    gradients: float
    optimizer: float
    trainable: int
    frozen: int
    largest_layer: int
    estimator: str
    buckets: float = 0.0  # DeepSpeed's contiguous gradient reduction bucket(s)

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.buckets


def _offload(run: RunConfig, key: str) -> bool:
    entry = run.deepspeed.zero_optimization.get(key) or {}
    return isinstance(entry, dict) and str(entry.get("device", "none")).lower() in ("cpu", "nvme")


def count_parameters(model_cfg: Any, run: RunConfig) -> tuple[int, int, int]:
    """(trainable, frozen, largest layer) parameter counts of the stage's module, built on the meta device."""
    from model import VideoXL2ForCausalLM
    from train.objectives import TrainModule

    with torch.device("meta"):
        module = TrainModule(VideoXL2ForCausalLM(model_cfg), run.stage.loss, run.stage.masking)
    mods = module.trainable_modules()
    trainable_ids = {id(p) for name in run.stage.trainable for p in mods[name].parameters()}
    trainable = sum(p.numel() for p in module.parameters() if id(p) in trainable_ids)
    frozen = sum(p.numel() for p in module.parameters() if id(p) not in trainable_ids)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules())
    return trainable, frozen, largest


def model_states(run: RunConfig, trainable: int, frozen: int, largest: int, gpus: int, dp: int) -> ModelStates:
    """Per-GPU bytes of parameters, gradients and optimizer states (DeepSpeed's estimators; see the module doc).

    `dp`: data-parallel ranks the states are partitioned over (gpus / sequence_parallel).
    """
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    zero = run.deepspeed.zero_stage
    nodes = max(1, math.ceil(dp / GPUS_PER_NODE))
    per_node = dp // nodes if dp % nodes == 0 else dp
    opt_off = _offload(run, "offload_optimizer")
    par_off = _offload(run, "offload_param")
    wide = 2.0 if run.deepspeed.precision == "fp32" else 1.0  # 4- instead of 2-byte weights and gradients
    t = trainable
    if zero == 3:
        _, gpu, largest_mem = estimate_zero3_model_states_mem_needs(
            t, largest, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=opt_off,
            cpu_offload_params=par_off, zero_init=True)
        # the estimate = gathered largest layer + [2 params16 + 16 (grads32, params32, Adam)] x t / dp
        if opt_off:
            params = gpu * wide
            grads = optim = 0.0
        else:
            params = largest_mem * wide + 2 * t / dp * wide
            grads = 4 * t / dp
            optim = gpu - largest_mem - 2 * t / dp - grads
        params += (0 if par_off else 2 * frozen / dp * wide)
        name = "estimate_zero3_model_states_mem_needs"
    else:
        _, gpu = estimate_zero2_model_states_mem_needs(t, num_gpus_per_node=per_node, num_nodes=nodes,
                                                       cpu_offload=opt_off)
        # the estimate = 2 params16 + [2 grads16 + 4 grads32 + 4 params32 + 8 Adam] x t / dp
        params = 2 * t * wide
        if opt_off:
            grads = optim = 0.0
        else:
            optim = 12 * t / dp
            grads = gpu - 2 * t - optim + 2 * t / dp * (wide - 1)  # 16-bit + fp32 gradient partitions
            if zero < 2:  # 16-bit gradients are not partitioned below ZeRO-2
                grads += 2 * t * (1 - 1 / dp) * wide
            if zero == 0:  # nor the optimizer states
                optim = 12 * t
        params += 2 * frozen * wide
        name = "estimate_zero2_model_states_mem_needs"
    zo = run.deepspeed.zero_optimization
    buckets = 0.0
    if zero >= 1 and zo.get("contiguous_gradients", True) and not opt_off:
        # setup_buckets allocates reduce_bucket_size elements of the reduction dtype (two with overlap_comm)
        count = 2 if zo.get("overlap_comm", False) else 1
        buckets = float(zo.get("reduce_bucket_size", 5e8)) * (2 * wide) * count
    return ModelStates(params, grads, optim, t, frozen, largest, name, buckets)


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward; parameters (and views of them, such as the
    transposed weights a matmul keeps) excluded."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self.params = {StorageWeakRef(p.untyped_storage()) for p in params}
        self.sizes: dict[Any, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = self._ref(t.untyped_storage())
        if key not in self.params:
            self.sizes[key] = max(self.sizes.get(key, 0), int(t.untyped_storage().nbytes()))
        return t

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def largest(self) -> int:
        return max(self.sizes.values(), default=0)


class FakeModel:
    """The stage's model with FakeTensor parameters (no memory) for tracing activations."""

    def __init__(self, model_cfg: Any, run: RunConfig, checkpointing: bool) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        from model import VideoXL2ForCausalLM

        self.dtype = torch.float32 if run.deepspeed.precision == "fp32" else torch.bfloat16
        with torch.device("meta"):
            model = VideoXL2ForCausalLM(model_cfg)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        trainable = set(run.stage.trainable)
        self.params: list[torch.Tensor] = []
        with self.mode:
            for name, sub in model.named_children():
                for mod in sub.modules():
                    for pname, p in list(mod._parameters.items()):
                        if p is None:
                            continue
                        fake = nn.Parameter(torch.empty(p.shape, dtype=self.dtype), requires_grad=name in trainable)
                        mod._parameters[pname] = fake
                        self.params.append(fake)
                    for bname, b in list(mod._buffers.items()):
                        if b is not None:
                            mod._buffers[bname] = torch.zeros(b.shape, dtype=b.dtype)
        self.model = model
        self.trainable = trainable

    def trace(self, fn: Any) -> SavedBytes:
        saved = SavedBytes(self.params)
        with self.mode, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            fn()
        return saved


@dataclass
class Activations:
    """Bytes per GPU of activations for one micro-batch, by part."""

    vision: float
    llm: float
    head: float
    working: float
    seq_len: int
    frames: int

    @property
    def total(self) -> float:
        return self.vision + self.llm + self.head + self.working


def sequence_length(frames: int, model_cfg: Any, timestamp_tokens: int) -> int:
    """Tokens of one sample with `frames` frames (whole groups) and TEXT_TOKENS of text."""
    groups = -(-frames // model_cfg.frames_per_group)
    return TEXT_TOKENS + groups * (model_cfg.tokens_per_group + timestamp_tokens)


def activations(fake: FakeModel, fake_ac: FakeModel | None, run: RunConfig, frames: int, model_cfg: Any,
                timestamp_tokens: int, sp: int) -> Activations:
    """Traced activation bytes of one micro-batch of samples with `frames` frames (see the module doc)."""
    cfg = model_cfg
    per_sample = min(sequence_length(frames, cfg, timestamp_tokens), run.stage.max_length)
    groups_fit = max(0, (per_sample - TEXT_TOKENS) // (cfg.tokens_per_group + timestamp_tokens))
    groups = min(-(-frames // cfg.frames_per_group), groups_fit)
    rows = run.loop.micro_batch_size
    if run.loop.packing is not None:  # rows of max_tokens, as many samples as fit
        row_len = max(per_sample, run.loop.packing.max_tokens)
        per_row = max(1, run.loop.packing.max_tokens // per_sample)
        samples, seq = rows * per_row, row_len
    else:
        samples, seq = rows, per_sample
    seq_rank = -(-seq // sp)
    n_frames = samples * groups * cfg.frames_per_group
    d_llm = int(cfg.text_config.hidden_size)
    upstream_trains = bool({"vision_tower", "dts", "projector"} & fake.trainable)
    chunked = run.stage.chunked_attention.fraction > 0  # a 4-D mask; packed rows alone need none (model/packing.py)

    def parts(fm: FakeModel) -> tuple[SavedBytes, SavedBytes, SavedBytes]:
        m, dt = fm.model, fm.dtype

        def vision() -> None:
            if n_frames:
                px = torch.empty(n_frames, 3, cfg.image_size, cfg.image_size, dtype=dt)
                m.project_groups(m.synthesize_groups(px))

        def llm() -> None:
            emb = torch.empty(rows, seq_rank, d_llm, dtype=dt, requires_grad=upstream_trains)
            mask = torch.ones(rows, 1, seq_rank, seq, dtype=torch.bool) if chunked else None
            pos = torch.arange(seq_rank).expand(rows, seq_rank)
            m.llm.model(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False)

        def head() -> None:
            sup = samples * min(SUPERVISED_TOKENS, per_sample) // sp + 1
            hid = torch.empty(sup, d_llm, dtype=dt, requires_grad=True)
            logits = m.llm.lm_head(hid).float()
            nn.functional.cross_entropy(logits, torch.zeros(sup, dtype=torch.long))

        return fm.trace(vision), fm.trace(llm), fm.trace(head)

    v, lm, h = parts(fake)
    vision_b, llm_b = float(v.total), float(lm.total)
    if fake_ac is not None:  # keep layer inputs; recompute one layer at a time in backward
        v_ac, lm_ac, _ = parts(fake_ac)
        n_vis = int(cfg.vision_config.num_hidden_layers)
        n_llm = int(cfg.text_config.num_hidden_layers)
        vision_b = float(v_ac.total) + float(v.total) / max(1, n_vis)
        llm_b = float(lm_ac.total) + float(lm.total) / max(1, n_llm)
    working = 2.0 * max(v.largest, lm.largest) + 2.0 * h.largest
    return Activations(vision_b, llm_b, float(h.total), working, seq, samples * groups * cfg.frames_per_group)


@dataclass
class Plan:
    states: ModelStates
    acts: Activations
    gpu_bytes: float
    sequence_parallel: int
    dp: int

    @property
    def total(self) -> float:
        return self.states.total + self.acts.total


def make_plan(run: RunConfig, model_cfg: Any, gpus: int, gpu_mem_gb: float, timestamp_tokens: int,
              frames: int | None = None) -> Plan:
    """The memory plan at `frames` (default: the stage's frames_upbound)."""
    sp = run.loop.sequence_parallel
    if gpus < 1 or gpus % sp:
        raise ConfigError("gpus", f"must be a positive multiple of loop.sequence_parallel={sp}, got {gpus}")
    dp = gpus // sp
    t, f, largest = count_parameters(model_cfg, run)
    states = model_states(run, t, f, largest, gpus, dp)
    fake = FakeModel(model_cfg, run, checkpointing=False)
    fake_ac = FakeModel(model_cfg, run, checkpointing=True) if run.loop.activation_checkpointing else None
    acts = activations(fake, fake_ac, run, run.stage.frames_upbound if frames is None else frames, model_cfg,
                       timestamp_tokens, sp)
    return Plan(states, acts, gpu_mem_gb * 1e9, sp, dp)


def largest_frames(run: RunConfig, model_cfg: Any, plan: Plan, timestamp_tokens: int) -> tuple[int, int]:
    """(largest frames_upbound whose plan fits the GPU, largest that max_length admits), multiples of 4."""
    step = model_cfg.frames_per_group
    per_group = model_cfg.tokens_per_group + timestamp_tokens
    by_length = max(0, (run.stage.max_length - TEXT_TOKENS) // per_group) * step
    fake = FakeModel(model_cfg, run, checkpointing=False)
    fake_ac = FakeModel(model_cfg, run, checkpointing=True) if run.loop.activation_checkpointing else None
    sp = plan.sequence_parallel

    def fits(frames: int) -> bool:
        acts = activations(fake, fake_ac, run, frames, model_cfg, timestamp_tokens, sp)
        return plan.states.total + acts.total <= plan.gpu_bytes

    if not fits(step):
        return 0, by_length
    lo, hi = 1, max(1, by_length // step)  # in groups; beyond max_length more frames are truncated away
    if fits(hi * step):
        return hi * step, by_length
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * step) else (lo, mid)
    return lo * step, by_length


def gib(x: float) -> str:
    return f"{x / 2**30:8.2f} GiB"


def report(run: RunConfig, plan: Plan, frames_fit: tuple[int, int], gpus: int) -> str:
    """The printed plan."""
    s, a = plan.states, plan.acts
    zero = run.deepspeed.zero_stage
    off = [k for k in ("offload_optimizer", "offload_param") if _offload(run, k)]
    lines = [
        f"memory plan: stage={run.stage.name} zero={zero}{' offload=' + ','.join(off) if off else ''} "
        f"precision={run.deepspeed.precision} gpus={gpus} (data-parallel {plan.dp} x sequence-parallel "
        f"{plan.sequence_parallel}) gpu memory {plan.gpu_bytes / 1e9:.0f} GB = {gib(plan.gpu_bytes).strip()}",
        f"parameters: {s.trainable:,} trainable ({', '.join(run.stage.trainable)}), {s.frozen:,} frozen; "
        f"model states from deepspeed {s.estimator}",
        f"  parameters            {gib(s.parameters)}",
        f"  gradients             {gib(s.gradients)}",
        f"  optimizer states      {gib(s.optimizer)}",
        f"  reduce buckets        {gib(s.buckets)}",
        f"activations: micro-batch {run.loop.micro_batch_size} x {a.seq_len} tokens"
        f"{' (packed rows)' if run.loop.packing else ''}, {a.frames} frames "
        f"(frames_upbound={run.stage.frames_upbound}), max_length={run.stage.max_length}, activation "
        f"checkpointing {'on' if run.loop.activation_checkpointing else 'off'}",
        f"  vision tower + DTS    {gib(a.vision)}",
        f"  LLM                   {gib(a.llm)}",
        f"  LM head               {gib(a.head)}",
        f"  backward working set  {gib(a.working)}",
        f"total per GPU           {gib(plan.total)}  ({100 * plan.total / plan.gpu_bytes:.0f}% of the GPU)",
        f"largest frames_upbound that fits: {frames_fit[0]} frames "
        f"(max_length={run.stage.max_length} admits up to {frames_fit[1]} frames)",
    ]
    return "\n".join(lines)


def split_args(argv: list[str]) -> tuple[dict[str, float], list[str]]:
    """Separate `gpus=` / `gpu_mem_gb=` from the Hydra overrides."""
    own: dict[str, float] = {"gpus": 1.0, "gpu_mem_gb": 80.0}
    rest = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in own:
            try:
                own[key] = float(value)
            except ValueError:
                raise ConfigError(key, f"expected a number, got {value!r}") from None
        else:
            rest.append(arg)
    if own["gpus"] < 1 or own["gpus"] != int(own["gpus"]):
        raise ConfigError("gpus", f"must be a positive integer, got {own['gpus']:g}")
    if not own["gpu_mem_gb"] > 0:
        raise ConfigError("gpu_mem_gb", f"must be > 0, got {own['gpu_mem_gb']:g}")
    return own, rest


def compose_run(overrides: list[str]) -> tuple[RunConfig, Any, int]:
    """(run config, model config, timestamp tokens) composed like `python -m train`."""
    from train import build
    from train.config import parse_run_config, validate_run_config

    run = parse_run_config(build.compose_config(overrides))
    init = run.stage.init_from
    model_cfg = build.model_config(run, read_init_from=bool(init) and (Path(init) / "config.json").is_file())
    ts = build.FALLBACK_TIMESTAMP_TOKENS
    validate_run_config(run, frames_per_group=model_cfg.frames_per_group, tokens_per_group=model_cfg.tokens_per_group,
                        timestamp_tokens=ts)
    return run, model_cfg, ts


def model_source(run: RunConfig, model_cfg: Any) -> str:
    """One line saying which model the plan is for: the `model` group's, or (as `python -m train` trains it)
    the config.json of an existing `stage.init_from`, then with the fields where the group differs."""
    from train import build

    init = run.stage.init_from
    if not init:
        return "model: the model group's config (stage.init_from is null)"
    if not (Path(init) / "config.json").is_file():
        return f"model: the model group's config (stage.init_from={init} has no config.json yet)"
    differs = build.model_group_differences(run, model_cfg)
    line = f"model: {init}/config.json (stage.init_from), as python -m train would train it"
    if differs:
        line += (f"; the model group differs in {len(differs)} field{'s' if len(differs) > 1 else ''}, e.g. "
                 f"{differs[0]} (stage.init_from=null plans the model group)")
    return line


def main(argv: list[str] | None = None) -> str:
    """Print (and return) the plan; a bad argument or config exits 2 with one line."""
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        own, overrides = split_args(list(sys.argv[1:] if argv is None else argv))
        run, model_cfg, ts = compose_run(overrides)
        gpus = int(own["gpus"])
        plan = make_plan(run, model_cfg, gpus, own["gpu_mem_gb"], ts)
        text = model_source(run, model_cfg) + "\n" + report(run, plan, largest_frames(run, model_cfg, plan, ts), gpus)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(text)
    return text


if __name__ == "__main__":
    main()
