"""VideoXL2ForCausalLM: config/presets, encode path, embedding, forward/backward, freezing, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from model import VideoXL2Config, VideoXL2ForCausalLM, build_preset, config_from_dict
from model.presets import preset_dir

PUBLISHED_PARAMS_7B = 8_123_871_520  # released Video-XL-2 minus the unused text_mlp


@pytest.fixture(scope="module")
def tiny_cfg() -> VideoXL2Config:
    return build_preset("tiny")


@pytest.fixture()
def tiny(tiny_cfg: VideoXL2Config) -> VideoXL2ForCausalLM:
    torch.manual_seed(0)
    return VideoXL2ForCausalLM(tiny_cfg)


def make_batch(cfg: VideoXL2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two videos (8 and 4 frames) and one image (repeated 4x), pads placed by hand."""
    gen = torch.Generator().manual_seed(seed)
    s, t, pad = cfg.image_size, cfg.tokens_per_group, cfg.vision_pad_token_id
    image = torch.rand(1, 3, s, s, generator=gen) * 2 - 1
    pixel_values = torch.cat([torch.rand(12, 3, s, s, generator=gen) * 2 - 1, image.expand(4, -1, -1, -1)])
    groups_per_sample = [2, 1, 1]
    length = 6 + 2 * (t + 3) + 8
    input_ids = torch.randint(6, cfg.text_config.vocab_size, (3, length), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    for b, groups in enumerate(groups_per_sample):
        pos = 4
        for _ in range(groups):
            pos += 3  # timestamp text tokens
            input_ids[b, pos:pos + t] = pad
            pos += t
    # right-pad the shorter samples
    used = [4 + g * (3 + t) + 6 for g in groups_per_sample]
    for b, n in enumerate(used):
        input_ids[b, n:] = cfg.text_config.pad_token_id
        attention_mask[b, n:] = 0
    labels = input_ids.clone()
    labels[input_ids == pad] = -100
    labels[attention_mask == 0] = -100
    labels[:, :4] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": pixel_values}


def ref_bilinear(maps: torch.Tensor, out: int) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of (N, C, P, P) written from the sampling formula."""
    src = maps.shape[-1]

    def taps(i: int) -> tuple[int, int, float]:
        x = max((i + 0.5) * src / out - 0.5, 0.0)
        lo = min(int(math.floor(x)), src - 1)
        hi = min(lo + 1, src - 1)
        return lo, hi, x - lo

    result = torch.zeros(*maps.shape[:2], out, out, dtype=torch.float64)
    m = maps.double()
    for i in range(out):
        y0, y1, fy = taps(i)
        for j in range(out):
            x0, x1, fx = taps(j)
            result[..., i, j] = ((1 - fy) * ((1 - fx) * m[..., y0, x0] + fx * m[..., y0, x1])
                                 + fy * ((1 - fx) * m[..., y1, x0] + fx * m[..., y1, x1]))
    return result


# -- config and presets --------------------------------------------------------------------------------

def test_tiny_preset_fields(tiny_cfg: VideoXL2Config) -> None:
    raw = OmegaConf.load(preset_dir() / "tiny.yaml")
    assert tiny_cfg.tokens_per_group == (raw.interp_grid // raw.video_pool) ** 2
    assert tiny_cfg.image_size == raw.vision_config.image_size
    assert tiny_cfg.vision_config.num_hidden_layers == raw.vision_config.num_hidden_layers
    assert tiny_cfg.text_config.rope_parameters["rope_theta"] == raw.text_config.rope_theta
    assert tiny_cfg.tokenizer == "tiny"
    assert (tiny_cfg.vision_pad_token_id, tiny_cfg.text_config.eos_token_id, tiny_cfg.text_config.pad_token_id) == (3, 2, 0)
    assert config_from_dict(raw).to_dict() == tiny_cfg.to_dict()


def test_7b_preset_fields() -> None:
    cfg = build_preset("videoxl2_7b")
    assert cfg.tokens_per_group == 144 and cfg.image_size == 384 and cfg.tokenizer is None
    assert cfg.image_size // cfg.vision_config.patch_size == 27
    assert cfg.vision_pad_token_id == 151654


def test_overrides_and_unknown_keys() -> None:
    cfg = build_preset("tiny", interp_grid=4, text_config={"num_hidden_layers": 2})
    assert cfg.tokens_per_group == 4 and cfg.text_config.num_hidden_layers == 2
    assert cfg.text_config.hidden_size == build_preset("tiny").text_config.hidden_size
    with pytest.raises(ValueError, match="bogus_field"):
        build_preset("tiny", bogus_field=1)
    with pytest.raises(ValueError, match="text_config.'nope'"):
        build_preset("tiny", text_config={"nope": 1})
    with pytest.raises(ValueError, match="vision_config.'nope'"):
        build_preset("tiny", vision_config={"nope": 1})
    with pytest.raises(FileNotFoundError, match="not_a_preset"):
        build_preset("not_a_preset")


def test_preset_from_yaml_path(tmp_path) -> None:
    raw = OmegaConf.load(preset_dir() / "tiny.yaml")
    raw.text_config.num_hidden_layers = 1
    raw.tokenizer = "/some/qwen/dir"
    path = tmp_path / "mine.yaml"
    OmegaConf.save(raw, path)
    cfg = build_preset(path)
    assert cfg.text_config.num_hidden_layers == 1 and cfg.tokenizer == "/some/qwen/dir"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"interp_grid": 5}, "interp_grid"),
        ({"dts_norm_groups": 7}, "dts_norm_groups"),
        ({"dts_layout": "sideways"}, "dts_layout"),
        ({"frames_per_group": 8}, "frames_per_group"),
        ({"video_pool": 0}, "video_pool"),
        ({"vision_pad_token_id": 5000}, "vision_pad_token_id"),
        ({"image_std": [0.5, 0.5]}, "image_std"),
    ],
)
def test_invalid_fields_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_preset("tiny", **overrides)


def test_auto_classes(tiny_cfg: VideoXL2Config) -> None:
    assert isinstance(AutoConfig.for_model("videoxl2"), VideoXL2Config)
    model = AutoModelForCausalLM.from_config(tiny_cfg)
    assert isinstance(model, VideoXL2ForCausalLM)
    assert [name for name, _ in model.named_children()] == ["vision_tower", "dts", "projector", "llm"]


# -- encode path -----------------------------------------------------------------------------------------

def stage_shapes(model: VideoXL2ForCausalLM, pixel_values: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, args, output):
            if args:
                shapes[name + ".in"] = tuple(args[0].shape)
            out = output if isinstance(output, torch.Tensor) else output.last_hidden_state
            shapes[name] = tuple(out.shape)
        return hook

    hooks = [model.vision_tower.encoder.register_forward_hook(record("vision")),
             model.dts.register_forward_hook(record("dts")),
             model.dts.encoder[2].register_forward_hook(record("stage1")),
             model.projector.register_forward_hook(record("projector"))]
    shapes["out"] = tuple(model.encode_frames(pixel_values).shape)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize("preset", ["tiny", "videoxl2_7b"])
def test_encode_stage_shapes(preset: str) -> None:
    cfg = build_preset(preset)
    with torch.device("meta"):
        model = VideoXL2ForCausalLM(cfg)
        pixel_values = torch.empty(8, 3, cfg.image_size, cfg.image_size)
    c, d = cfg.vision_config.hidden_size, cfg.text_config.hidden_size
    g, p = cfg.interp_grid, cfg.image_size // cfg.vision_config.patch_size
    shapes = stage_shapes(model, pixel_values)
    assert shapes["vision"] == (8, p * p, c)
    assert shapes["dts.in"] == (2, c, 4, g, g)
    assert shapes["stage1"] == (2, c, 2, g, g)
    assert shapes["dts"] == (2, c, 1, g, g)
    assert shapes["projector.in"] == (2, g * g, c) and shapes["projector"] == (2, g * g, d)
    assert shapes["out"] == (2, cfg.tokens_per_group, d)
    if preset == "videoxl2_7b":
        assert (p, g, cfg.tokens_per_group, c) == (27, 24, 144, 1152)


def test_7b_param_count_matches_published() -> None:
    with torch.device("meta"):
        model = VideoXL2ForCausalLM(build_preset("videoxl2_7b"))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PUBLISHED_PARAMS_7B) / PUBLISHED_PARAMS_7B < 0.005
    dts = sum(p.numel() for p in model.dts.parameters())
    assert abs(dts - 93.5e6) / 93.5e6 < 0.01  # released DTS: ~93.5M parameters


def test_encode_frames_matches_stepwise_reference(tiny: VideoXL2ForCausalLM) -> None:
    cfg = tiny.config
    tiny.eval()
    with torch.no_grad():
        for p in tiny.dts.parameters():  # make the zero-initialised blocks non-trivial
            p.add_(torch.randn_like(p) * 0.05)
        px = torch.randn(8, 3, cfg.image_size, cfg.image_size)
        out = tiny.vision_tower(px, output_hidden_states=True)
        feats = out.hidden_states[-1]  # before post_layernorm
        assert not torch.allclose(feats, out.last_hidden_state)
        p = cfg.image_size // cfg.vision_config.patch_size
        maps = feats.transpose(1, 2).reshape(8, -1, p, p)
        resized = ref_bilinear(maps, cfg.interp_grid).float()
        groups = torch.stack([resized[4 * i:4 * i + 4].transpose(0, 1) for i in range(2)])
        synth = tiny.dts(groups)[:, :, 0]  # DTS itself is checked in test_dts.py
        tokens = synth.flatten(2).transpose(1, 2)
        lin0, lin2 = tiny.projector[0], tiny.projector[2]
        proj = F.gelu(tokens @ lin0.weight.t() + lin0.bias) @ lin2.weight.t() + lin2.bias
        k, g = cfg.video_pool, cfg.interp_grid
        grid = proj.reshape(2, g, g, -1)
        pooled = torch.stack([grid[:, i * k:(i + 1) * k, j * k:(j + 1) * k].mean(dim=(1, 2))
                              for i in range(g // k) for j in range(g // k)], dim=1)
        torch.testing.assert_close(tiny.encode_frames(px), pooled, rtol=1e-4, atol=1e-5)


def test_encode_frames_rejects_bad_input(tiny: VideoXL2ForCausalLM) -> None:
    s = tiny.config.image_size
    with pytest.raises(ValueError, match="frames_per_group"):
        tiny.encode_frames(torch.zeros(6, 3, s, s))
    with pytest.raises(ValueError, match="image_size"):
        tiny.encode_frames(torch.zeros(4, 3, s + 8, s + 8))


# -- embedding and forward -------------------------------------------------------------------------------

def test_embed_inputs_fills_pads_row_major(tiny: VideoXL2ForCausalLM) -> None:
    cfg = tiny.config
    batch = make_batch(cfg)
    ids = batch["input_ids"]
    t, d = cfg.tokens_per_group, cfg.text_config.hidden_size
    visual = torch.arange(4 * t * d, dtype=torch.float32).reshape(4, t, d)
    with torch.no_grad():
        embeds = tiny.embed_inputs(ids, visual)
        text = tiny.llm.get_input_embeddings()(ids)
    order = [(b, i) for b in range(ids.shape[0]) for i in range(ids.shape[1]) if ids[b, i] == cfg.vision_pad_token_id]
    flat = visual.reshape(-1, d)
    for n, (b, i) in enumerate(order):
        assert torch.equal(embeds[b, i], flat[n])
    keep = ids != cfg.vision_pad_token_id
    assert torch.equal(embeds[keep], text[keep])
    with pytest.raises(ValueError, match=rf"{len(order)} <\|vision_pad\|>.*{3 * t} visual"):
        tiny.embed_inputs(ids, visual[:3])
    with pytest.raises(ValueError, match="0 visual"):
        tiny.embed_inputs(ids, None)


def test_forward_backward_mixed_batch(tiny: VideoXL2ForCausalLM) -> None:
    batch = make_batch(tiny.config)
    tiny.train()
    out = tiny(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, tiny.config.text_config.vocab_size)
    assert torch.isfinite(out.loss)
    # loss equals an independently computed shifted cross-entropy
    logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None]
    assert missing == []
    for name in ("vision_tower", "dts", "projector", "llm"):
        total = sum(p.grad.abs().sum() for p in getattr(tiny, name).parameters())
        assert total > 0, name


def test_lm_loss_equals_the_full_logits_loss_and_gradients(tiny: VideoXL2ForCausalLM) -> None:
    """`lm_loss` (LM head on supervised positions only) gives forward(labels).loss and the same gradients."""
    batch = make_batch(tiny.config, seed=3)
    tiny.train()
    full = tiny(**batch).loss
    full.backward()
    ref_grads = {n: p.grad.clone() for n, p in tiny.named_parameters()}
    tiny.zero_grad(set_to_none=True)
    loss = tiny.lm_loss(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"])
    loss.backward()
    torch.testing.assert_close(loss, full, rtol=1e-6, atol=1e-6)
    for name, param in tiny.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert tiny.llm.lm_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="labels shape"):
        tiny.lm_loss(batch["input_ids"], batch["attention_mask"], batch["labels"][:, 1:], batch["pixel_values"])


def test_lm_loss_from_group_tokens_equals_from_pixels(tiny: VideoXL2ForCausalLM) -> None:
    """Frames given as their `synthesize_groups` output give the pixel path's loss and projector/LLM gradients."""
    batch = make_batch(tiny.config, seed=5)
    tiny.train()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    ref = tiny.lm_loss(ids, mask, labels, batch["pixel_values"])
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in tiny.named_parameters() if n.startswith(("projector", "llm"))}
    tiny.zero_grad(set_to_none=True)
    with torch.no_grad():
        tokens = tiny.synthesize_groups(batch["pixel_values"])
    assert tokens.shape == (4, tiny.config.interp_grid**2, tiny.config.vision_hidden_size)
    loss = tiny.lm_loss(ids, mask, labels, group_tokens=tokens)
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(dict(tiny.named_parameters())[name].grad, grad, rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="not both"):
        tiny.lm_loss(ids, mask, labels, batch["pixel_values"], group_tokens=tokens)
    with pytest.raises(ValueError, match="group_tokens must be"):
        tiny.project_groups(tokens[:, :-1])


def test_lm_loss_without_frames_touches_every_weight(tiny: VideoXL2ForCausalLM) -> None:
    """A text-only batch still gives every visual weight a (zero) gradient, as forward does (ZeRO-3)."""
    text_ids = make_batch(tiny.config)["input_ids"][:, -6:]
    tiny.train()
    loss = tiny.lm_loss(text_ids, None, text_ids)
    torch.testing.assert_close(loss, tiny(input_ids=text_ids, labels=text_ids).loss)
    loss.backward()
    assert all(p.grad is not None for p in tiny.parameters())


def test_backward_reaches_the_weights_in_one_order_with_or_without_frames(tiny: VideoXL2ForCausalLM) -> None:
    """ZeRO-2/3 reduce gradients in buckets filled in the order the weights' gradient hooks fire, so ranks whose
    micro-batches hold frames and none must fire them in the same order (else one weight's gradient is summed
    with another's). Also with the frozen vision tower + DTS given as `group_tokens` (the feature cache)."""
    batch = make_batch(tiny.config)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["input_ids"]
    text_ids = ids[:, -6:]
    names = {p: n for n, p in tiny.named_parameters()}
    tiny.train()

    def hook_order(run) -> list[str]:
        order: list[str] = []
        handles = [p.register_post_accumulate_grad_hook(lambda q: order.append(names[q]))
                   for p in tiny.parameters() if p.requires_grad]
        try:
            run().backward()
        finally:
            for h in handles:
                h.remove()
        tiny.zero_grad(set_to_none=True)
        return order

    with_frames = hook_order(lambda: tiny.lm_loss(ids, mask, labels, batch["pixel_values"]))
    without = hook_order(lambda: tiny.lm_loss(text_ids, None, text_ids))
    assert len(with_frames) == len(names) and without == with_frames
    for module in (tiny.vision_tower, tiny.dts):
        module.requires_grad_(False)
    with torch.no_grad():
        tokens = tiny.synthesize_groups(batch["pixel_values"])
    cached = hook_order(lambda: tiny.lm_loss(ids, mask, labels, group_tokens=tokens))
    assert "projector.0.weight" in cached and "llm.model.embed_tokens.weight" in cached
    assert hook_order(lambda: tiny.lm_loss(text_ids, None, text_ids)) == cached


def test_visual_content_changes_logits(tiny: VideoXL2ForCausalLM) -> None:
    batch = make_batch(tiny.config)
    tiny.eval()
    with torch.no_grad():
        a = tiny(**batch).logits
        other = dict(batch, pixel_values=batch["pixel_values"].flip(0))
        b = tiny(**other).logits
    assert (a - b).abs().max() > 1e-4


def test_fresh_projector_keeps_the_feature_scale(tiny: VideoXL2ForCausalLM) -> None:
    """Projector layers start fan-in scaled (bound 1/sqrt(fan_in)), not at the LLM's std-0.02 init, which
    would shrink unit-scale vision features to ~1% and slow learning to read them."""
    for layer in (tiny.projector[0], tiny.projector[2]):
        bound = layer.weight.shape[1] ** -0.5
        assert layer.weight.abs().max() <= bound + 1e-6
        assert layer.weight.std() > 0.8 * bound / math.sqrt(3.0)  # uniform(-b, b) has std b / sqrt(3)
    features = torch.randn(64, tiny.config.vision_hidden_size)
    with torch.no_grad():
        out = tiny.projector(features)
    assert out.pow(2).mean().sqrt() > 0.1  # a std-0.02 init gives ~0.02 here


def test_freezing_routes_gradients_only_to_trainable(tiny: VideoXL2ForCausalLM) -> None:
    tiny.requires_grad_(False)
    tiny.dts.requires_grad_(True)
    tiny.projector.requires_grad_(True)
    tiny.train()
    tiny(**make_batch(tiny.config)).loss.backward()
    for name, param in tiny.named_parameters():
        trainable = name.startswith(("dts.", "projector."))
        assert (param.grad is not None) == trainable, name
    for module in (tiny.dts, tiny.projector):
        assert sum(p.grad.abs().sum() for p in module.parameters()) > 0


def test_text_only_training_touches_every_weight(tiny: VideoXL2ForCausalLM) -> None:
    batch = make_batch(tiny.config)
    text_ids = batch["input_ids"][:, -6:]
    tiny.train()
    out = tiny(input_ids=text_ids, labels=text_ids)
    out.loss.backward()
    for name, param in tiny.named_parameters():
        assert param.grad is not None, name
        if not name.startswith("llm."):
            assert torch.count_nonzero(param.grad) == 0, name
    tiny.eval()
    with torch.no_grad():
        torch.testing.assert_close(tiny(input_ids=text_ids).logits, out.logits)
        empty = torch.zeros(0, 3, tiny.config.image_size, tiny.config.image_size)
        torch.testing.assert_close(tiny(input_ids=text_ids, pixel_values=empty).logits, out.logits)


def test_gradient_checkpointing_reaches_llm_and_vision(tiny: VideoXL2ForCausalLM) -> None:
    batch = make_batch(tiny.config)
    tiny.train()
    tiny(**batch).loss.backward()
    ref = {n: p.grad.clone() for n, p in tiny.named_parameters()}
    tiny.zero_grad(set_to_none=True)
    with pytest.warns(FutureWarning):  # the library's old name, kept as the contract's entry point
        tiny.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in tiny.llm.model.layers)
    assert all(layer.gradient_checkpointing for layer in tiny.vision_tower.encoder.layers)
    assert all(tiny.dts.encoder[i].gradient_checkpointing for i in (0, 1, 3, 4))
    tiny(**batch).loss.backward()
    for name, param in tiny.named_parameters():
        torch.testing.assert_close(param.grad, ref[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("layout", ["temporal", "released"])
def test_save_load_round_trip(tmp_path, tiny_cfg: VideoXL2Config, layout: str) -> None:
    cfg = VideoXL2Config.from_dict({**tiny_cfg.to_dict(), "dts_layout": layout})
    torch.manual_seed(1)
    model = VideoXL2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.dts.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    batch = make_batch(cfg)
    batch.pop("labels")
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, VideoXL2ForCausalLM) and loaded.config.dts_layout == layout
    for name in ("frames_per_group", "interp_grid", "video_pool", "image_mean", "image_std", "tokenizer",
                 "vision_pad_token_id", "dts_norm_groups", "dts_max_relative_position", "dts_num_stages"):
        assert getattr(loaded.config, name) == getattr(model.config, name), name
    for sub in ("vision_config", "text_config"):
        a, b = getattr(loaded.config, sub).to_dict(), getattr(model.config, sub).to_dict()
        assert {k: v for k, v in a.items() if k != "dtype"} == {k: v for k, v in b.items() if k != "dtype"}
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, before)


def test_text_generation_with_cache(tiny: VideoXL2ForCausalLM) -> None:
    tiny.eval()
    ids = make_batch(tiny.config)["input_ids"][:1, -6:]
    out = tiny.generate(ids, max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        seq = ids
        for _ in range(4):
            nxt = tiny(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_end_to_end_with_tokenizer_and_sequence_builder(tiny_cfg: VideoXL2Config) -> None:
    """Tokenizer + sequence builder + frame preprocessing feed the model; a few steps reduce the loss."""
    import numpy as np

    from model import load_tokenizer
    from model.processing import preprocess_frames
    from model.sequence import build_sequence

    tokenizer = load_tokenizer(tiny_cfg.tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|vision_pad|>") == tiny_cfg.vision_pad_token_id
    conversation = [{"from": "human", "value": "<image>\nWhat happens?"},
                    {"from": "gpt", "value": "A red ball moves to the left."}]
    built = build_sequence(tokenizer, conversation, timestamps=[0.0, 4.0], num_groups=2,
                           tokens_per_group=tiny_cfg.tokens_per_group)
    frames = np.random.default_rng(0).integers(0, 256, (8, 40, 50, 3), dtype=np.uint8)
    pixel_values = preprocess_frames(frames, tiny_cfg.image_size, tiny_cfg.image_mean, tiny_cfg.image_std)
    torch.manual_seed(0)
    model = VideoXL2ForCausalLM(tiny_cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = model(input_ids=built.input_ids[None], labels=built.labels[None], pixel_values=pixel_values).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_generate_with_frames_forwards_to_video_generation(tiny_cfg: VideoXL2Config) -> None:
    """`generate(..., pixel_values=, layout=)` runs the video generator; dense full decoding equals greedy forward."""
    from model import load_tokenizer
    from model.sequence import build_sequence

    tokenizer = load_tokenizer(tiny_cfg.tokenizer)
    conversation = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "x"}]
    built = build_sequence(tokenizer, conversation, timestamps=[0.0, 4.0], num_groups=2,
                           tokens_per_group=tiny_cfg.tokens_per_group, for_generation=True)
    torch.manual_seed(0)
    model = VideoXL2ForCausalLM(tiny_cfg).eval()
    pixel_values = torch.rand(8, 3, tiny_cfg.image_size, tiny_cfg.image_size) * 2 - 1
    result = model.generate(built.input_ids, pixel_values=pixel_values, layout=built, prefill="full",
                            decode="full", max_new_tokens=3, eos_token_id=None)
    seq = built.input_ids[None]
    with torch.no_grad():
        for _ in range(3):
            nxt = model(input_ids=seq, pixel_values=pixel_values).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert [int(t) for t in result.token_ids] == seq[0, built.input_ids.numel():].tolist()
