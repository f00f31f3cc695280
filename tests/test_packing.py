"""Sample packing: per-sample attention in packed rows, equal loss/gradients packed vs unpacked,
token-weighted normalisation over accumulation, deterministic packing with exact resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from data.collate import DecodedSample, collate
from data.loader import build_loader
from data.packing import RowPacker, collate_packed
from model import VideoXL2ForCausalLM, build_preset, load_tokenizer
from model.packing import PACKED_SDPA, block_causal_mask, supervised_targets
from model.pooled_attention import POOLED_SDPA
from model.sequence import build_sequence
from train.config import ChunkedAttentionConfig
from train.engine import DistEnv
from train.objectives import TrainModule
from train.trainer import LoopState, StepLoop

TOKENS_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "token_kind", "group_index",
               "position_ids", "segment_ids")


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def cfg() -> Any:
    return build_preset("tiny")


def make_sample(tok: Any, cfg: Any, i: int, groups: int, answer_words: int = 3) -> DecodedSample:
    """A video (or text-only when groups == 0) sample with random frames and a short answer."""
    g = torch.Generator().manual_seed(100 + i)
    conv = [{"from": "human", "value": ("<image>\n" if groups else "") + f"What happens in clip {i}?"},
            {"from": "gpt", "value": " ".join(["red", "square", "moves", "left"][:answer_words]) + f" {i}."}]
    built = build_sequence(tok, conv, [2.0 * k for k in range(groups)] if groups else None, groups,
                           cfg.tokens_per_group)
    frames = groups * cfg.frames_per_group
    pixels = torch.rand(frames, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    return DecodedSample(sample_id=f"s{i}", task="caption", input_ids=built.input_ids, labels=built.labels,
                         pixel_values=pixels, timestamps=[2.0 * k for k in range(groups)],
                         token_kind=built.token_kind, group_index=built.group_index)


@pytest.fixture(scope="module")
def samples(tok: Any, cfg: Any) -> list[DecodedSample]:
    return [make_sample(tok, cfg, i, groups) for i, groups in enumerate([2, 1, 3, 0, 2])]


@pytest.fixture(scope="module")
def model(cfg: Any) -> VideoXL2ForCausalLM:
    torch.manual_seed(0)
    return VideoXL2ForCausalLM(cfg).eval()


def tensors(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in TOKENS_KEYS if k in batch}


def pack(samples: list[DecodedSample], cfg: Any, max_tokens: int, rows: int) -> list[dict[str, Any]]:
    """Micro-batches of packed rows, in stream order (the loader's rule)."""
    packer, out = RowPacker(max_tokens, rows), []
    for s in samples:
        if packer.oversize(s) or not packer.add(s):
            if not packer.empty:
                out.append(packer.take())
            if packer.oversize(s):
                out.append([[s]])
                continue
            packer.add(s)
    if not packer.empty:
        out.append(packer.take())
    return [collate_packed(r, cfg.text_config.pad_token_id, cfg.image_size, max_tokens) for r in out]


def test_collate_packed_keeps_samples_whole(samples: list[DecodedSample], cfg: Any) -> None:
    lengths = [int(s.input_ids.numel()) for s in samples]
    batch = pack(samples, cfg, max_tokens=lengths[0] + lengths[1] + 1, rows=2)[0]
    assert batch["sample_ids"][:2] == ["s0", "s1"]
    seg, pos = batch["segment_ids"], batch["position_ids"]
    for r in range(seg.shape[0]):
        for j in range(int(seg[r].max()) + 1):
            where = (seg[r] == j).nonzero().flatten()
            assert torch.equal(where, torch.arange(int(where[0]), int(where[-1]) + 1))  # contiguous
            assert torch.equal(pos[r, where], torch.arange(where.numel()))  # positions restart
    # frames follow their visual tokens: each sample's frames are where its <|vision_pad|> tokens say
    pads = (batch["input_ids"] == cfg.vision_pad_token_id)
    counts = batch["frame_counts"].tolist()
    order = [(r, int(j)) for r in range(seg.shape[0]) for j in seg[r].unique() if j >= 0]
    assert [int((pads[r] & (seg[r] == j)).sum()) // cfg.tokens_per_group * cfg.frames_per_group
            for r, j in order] == counts
    expected = torch.cat([s.pixel_values for s in samples[:len(counts)] if s.pixel_values.shape[0]])
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["attention_mask"].sum() == sum(lengths[:len(counts)])


def test_oversize_sample_trains_alone_and_is_counted(samples: list[DecodedSample], cfg: Any) -> None:
    lengths = [int(s.input_ids.numel()) for s in samples]
    cap = sorted(lengths)[-2]  # the longest sample exceeds it
    batches = pack(samples, cfg, max_tokens=cap, rows=1)
    seen = [i for b in batches for i in b["sample_ids"]]
    assert seen == [s.sample_id for s in samples]  # nothing dropped, order kept
    alone = [b for b in batches if b["oversize"]]
    assert len(alone) == 1 and len(alone[0]["sample_ids"]) == 1
    assert alone[0]["input_ids"].shape[1] == max(lengths)


@pytest.mark.parametrize("attention", ["block_mask", "packed_sdpa"])
def test_packed_logits_equal_alone_and_samples_are_isolated(samples: list[DecodedSample], cfg: Any,
                                                            model: VideoXL2ForCausalLM, attention: str) -> None:
    row = samples[:3]
    batch = collate_packed([[*row, samples[3]], row[:1]], cfg.text_config.pad_token_id, cfg.image_size, 10**6)

    def mask_of(b: dict[str, Any]) -> torch.Tensor | None:  # PACKED_SDPA needs none: it reads the positions
        return block_causal_mask(b["segment_ids"]) if attention == "block_mask" else None

    if attention == "packed_sdpa":
        model = copy.deepcopy(model)
        model.llm.set_attn_implementation(PACKED_SDPA)

    def packed_logits(b: dict[str, Any], m: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=b["input_ids"], attention_mask=m, pixel_values=b["pixel_values"],
                         position_ids=b["position_ids"], use_cache=False).logits[0]

    logits = packed_logits(batch, mask_of(batch))
    spans, offset = [], 0
    for s in row:
        n = int(s.input_ids.numel())
        spans.append(slice(offset, offset + n))
        offset += n
        with torch.no_grad():
            alone = model(input_ids=s.input_ids[None], pixel_values=s.pixel_values, use_cache=False).logits[0]
        torch.testing.assert_close(logits[spans[-1]], alone, atol=1e-5, rtol=1e-5)
    # perturb the middle sample (its frames and a text token): the others do not move
    changed = copy.deepcopy(row)
    changed[1].pixel_values = changed[1].pixel_values.flip(0) * 0.5
    changed[1].input_ids[3] = (changed[1].input_ids[3] + 1) % 200 + 10
    batch2 = collate_packed([[*changed, samples[3]], row[:1]], cfg.text_config.pad_token_id, cfg.image_size, 10**6)
    logits2 = packed_logits(batch2, mask_of(batch2))
    assert torch.equal(logits2[spans[0]], logits[spans[0]])
    assert torch.equal(logits2[spans[2]], logits[spans[2]])
    assert not torch.allclose(logits2[spans[1]], logits[spans[1]])
    if attention == "block_mask":  # the trap: on plain SDPA a 2-D all-ones mask lets a sample read the ones before
        leaky = packed_logits(batch2, torch.ones_like(batch2["input_ids"]))
        assert not torch.allclose(leaky[spans[2]], logits2[spans[2]], atol=1e-4)
    # the second row holds the first sample again, followed by padding
    n0 = int(row[0].input_ids.numel())
    with torch.no_grad():
        second = model(input_ids=batch["input_ids"], attention_mask=mask_of(batch), pixel_values=batch["pixel_values"],
                       position_ids=batch["position_ids"], use_cache=False).logits[1, :n0]
    torch.testing.assert_close(second, logits[:n0], atol=1e-5, rtol=1e-5)


def summed_loss(module: TrainModule, batches: list[dict[str, Any]]) -> tuple[float, list[torch.Tensor]]:
    """Token-mean loss over all batches (each micro-batch's summed loss / all targets) and its gradients."""
    module.zero_grad()
    total = sum(supervised_targets(b["labels"]) for b in batches)
    loss_value = 0.0
    for b in batches:
        loss = module(**tensors(b), reduction="sum") / total
        loss.backward()
        loss_value += float(loss.detach())
    return loss_value, [p.grad.detach().clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize(("view", "packing", "impl"), [("causal", False, "sdpa"), ("causal", True, PACKED_SDPA),
                                                      ("chunked", True, PACKED_SDPA), ("bilevel", True, POOLED_SDPA)])
def test_packed_loss_and_gradients_equal_unpacked(samples: list[DecodedSample], cfg: Any, model: VideoXL2ForCausalLM,
                                                  view: str, packing: bool, impl: str) -> None:
    """Packed rows train as the samples do alone: causal, under chunked prefill's view, and under bi-level
    decoding's (pooled entries; top_k 0, so no random dense chunk), the masked views attending per sample
    (model/block_attention.py)."""
    visibility = {"causal": None,
                  "chunked": ChunkedAttentionConfig(fraction=1.0, chunk_groups=1, prev_chunks=0),
                  "bilevel": ChunkedAttentionConfig(fraction=1.0, chunk_groups=1, prev_chunks=0, bilevel_fraction=1.0,
                                                    top_k=0, kv_pool=4)}[view]
    module = TrainModule(copy.deepcopy(model).train(), "lm", chunked_attention=visibility, packing=packing)
    assert module.model.llm.config._attn_implementation == impl
    pad = cfg.text_config.pad_token_id
    unpacked = [collate([s], pad, cfg.image_size) for s in samples]
    whole = [collate(samples, pad, cfg.image_size)]
    lengths = [int(s.input_ids.numel()) for s in samples]
    packed = pack(samples, cfg, max_tokens=max(lengths) + min(lengths), rows=2)
    assert len(packed) >= 2 and any(len(b["sample_ids"]) > b["input_ids"].shape[0] for b in packed)
    ref_loss, ref_grads = summed_loss(module, unpacked)
    for batches in (whole, packed):
        loss, grads = summed_loss(module, batches)
        assert abs(loss - ref_loss) < 1e-5
        assert len(grads) == len(ref_grads)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


class ScalingEngine:
    """DeepSpeed's contract on one rank: backward divides by grad_accum, step applies at the boundary."""

    def __init__(self, module: torch.nn.Module, accum: int) -> None:
        self.module, self.accum, self.micro = module, accum, 0
        self.grads: list[list[torch.Tensor]] = []

    def __call__(self, **batch: Any) -> torch.Tensor:
        return self.module(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def step(self) -> None:
        self.micro += 1
        if self.micro % self.accum == 0:
            self.grads.append([p.grad.detach().clone() for p in self.module.parameters() if p.grad is not None])
            self.module.zero_grad()

    def get_global_grad_norm(self) -> None:
        return None

    class optimizer:  # noqa: N801 - the engine attribute StepLoop reads
        param_groups: list[dict[str, Any]] = []


@pytest.mark.parametrize("accum", [1, 3])
def test_step_loop_is_token_weighted_over_accumulation(samples: list[DecodedSample], cfg: Any,
                                                       model: VideoXL2ForCausalLM, accum: int) -> None:
    module = TrainModule(copy.deepcopy(model).train(), "lm")
    pad = cfg.text_config.pad_token_id
    ref_loss, ref_grads = summed_loss(module, [collate(samples, pad, cfg.image_size)])
    # accum micro-batches of unequal token counts (a per-micro-batch mean would weigh them wrongly)
    cuts = {1: [len(samples)], 3: [1, 3, len(samples)]}[accum]
    parts = [samples[a:b] for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    for packed in (False, True):
        batches = [collate_packed([p], pad, cfg.image_size, 10**6) if packed else collate(p, pad, cfg.image_size)
                   for p in parts]
        module.zero_grad()
        engine = ScalingEngine(module, accum)
        loop = StepLoop(engine, DistEnv(0, 1, 0), torch.device("cpu"), grad_accum=accum,
                        max_consecutive_nonfinite=3, vision_pad_token_id=cfg.vision_pad_token_id, flops=None,
                        peak_flops_per_device=1.0, token_weighted=True)
        metrics = loop.one_step(iter(batches), LoopState(), {})
        assert abs(metrics["loss"] - ref_loss) < 1e-5
        for g, r in zip(engine.grads[0], ref_grads, strict=True):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
        slots = sum(b["input_ids"].numel() for b in batches)
        assert metrics["padding_fraction"] == pytest.approx(1 - sum(len(s.input_ids) for s in samples) / slots)


def write_shards(out: Path, n: int) -> None:
    from data.shards import ShardWriter
    from helpers import grey_mp4

    with ShardWriter(out, 3) as writer:
        for i in range(n):
            rec = {"id": f"v{i}", "video": f"k{i}.mp4", "task": "caption",
                   "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                     {"from": "gpt", "value": "Grey." + " grey" * (i % 4)}]}
            video = grey_mp4([(9 * i + 8 * f) % 256 for f in range(8 + 6 * (i % 3))], fps=2)
            writer.write(f"k{i:05d}", {"json": json.dumps(rec).encode(), "mp4": video})


@pytest.mark.parametrize(("workers", "k"), [(0, 2), (2, 3)])
def test_packing_loader_is_deterministic_and_resumes_exactly(tmp_path: Path, tok: Any, cfg: Any, workers: int,
                                                             k: int) -> None:
    write_shards(tmp_path / "a", 12)
    data = {"root": str(tmp_path), "train": [{"shards": "a/*.tar"}], "shuffle_buffer": 3}

    def make() -> Any:
        return build_loader(data, tok, cfg, split="train", loop=True, batch_size=2, num_workers=workers, seed=5,
                            frames_upbound=16, packing=110)

    def signature(b: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(b["sample_ids"]), b["input_ids"].tolist(), b["segment_ids"].tolist(), b["oversize"]

    def take(loader: Any, n: int) -> list[tuple[Any, ...]]:
        out = []
        for b in loader:
            out.append(signature(b))
            if len(out) == n:
                break
        return out

    reference = take(make(), 8)
    assert reference == take(make(), 8)  # deterministic
    assert any(len(sig[0]) > len(sig[1]) for sig in reference)  # some row holds several samples
    assert max(len(row) for sig in reference for row in sig[1]) <= 110 or any(sig[3] for sig in reference)
    first = make()
    head = take(first, k)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    assert head + take(resumed, 8 - k) == reference
    plain = build_loader(data, tok, cfg, split="train", loop=True, batch_size=2, num_workers=workers, seed=5,
                         frames_upbound=16)
    with pytest.raises(ValueError, match="fingerprint"):
        plain.load_state_dict(state)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_packed_and_unpacked_on_two_ranks_equal_the_single_pass(tmp_path: Path, zero_stage: int) -> None:
    """DeepSpeed ZeRO-2 and 3, 2 ranks x 2 accumulated micro-batches of unequal sizes (one text only), unpacked and
    packed: loss and gradients equal the token mean of all samples in one plain pass."""
    import subprocess
    import sys

    from helpers import REPO, free_port, subprocess_env

    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "tests" / "packing_dp_worker.py"), str(out), str(zero_stage)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for name in ("unpacked", "packed"):
        assert abs(result[name]["loss"] - result["reference_loss"]) < 1e-5, result
        assert result[name]["max_grad_diff"] < 1e-5 * max(1.0, result[name]["grad_scale"]), result


def test_packing_config_is_validated_naming_the_field() -> None:
    from train.config import ConfigError, RunConfig, StageConfig, parse_run_config, validate_run_config

    base = {"stage": {"name": "sft", "trainable": ["llm"], "lr": {"llm": 1e-4}, "steps": None, "epochs": 1.0},
            "model": {}, "data": {"train": [{"shards": "x/*.tar"}]}, "loop": {"packing": {"max_tokens": 512}}}
    run = parse_run_config(base)
    assert run.loop.packing is not None and run.loop.packing.max_tokens == 512
    with pytest.raises(ConfigError, match=r"^loop\.packing: .*stage\.steps or loop\.max_steps"):
        validate_run_config(run)
    run.loop.max_steps = 3
    validate_run_config(run)
    run.loop.packing.max_tokens = 0
    with pytest.raises(ConfigError, match=r"^loop\.packing\.max_tokens"):
        validate_run_config(run)
    assert isinstance(run, RunConfig) and isinstance(run.stage, StageConfig)


def test_packing_loader_drops_nothing_and_counts_oversize(tmp_path: Path, tok: Any, cfg: Any) -> None:
    write_shards(tmp_path / "a", 9)
    data = {"root": str(tmp_path), "train": [{"shards": "a/*.tar"}], "shuffle_buffer": 3}

    def one_pass(**kw: Any) -> list[dict[str, Any]]:
        return list(build_loader(data, tok, cfg, split="train", loop=False, num_workers=0, seed=5, frames_upbound=16,
                                 **kw))

    plain = one_pass(batch_size=1)
    lengths = sorted(int(b["attention_mask"].sum()) for b in plain)
    cap = lengths[len(lengths) // 2]  # about half the samples are longer than a row
    packed = one_pass(batch_size=2, packing=cap)
    assert [i for b in packed for i in b["sample_ids"]] == [i for b in plain for i in b["sample_ids"]]
    over = sum(n > cap for n in lengths)
    assert over > 0 and sum(b["oversize"] for b in packed) == over
    assert all(len(b["sample_ids"]) == 1 for b in packed if b["oversize"])
