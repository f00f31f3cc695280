"""`VideoXL2Config`: the configuration of a Video-XL-2-family model (SigLIP -> DTS -> projector -> Qwen2)."""

from __future__ import annotations

from transformers import PretrainedConfig, Qwen2Config, SiglipVisionConfig
from transformers.configuration_utils import SubConfigSpec

DTS_LAYOUTS = ("temporal", "released")


class VideoXL2Config(PretrainedConfig):
    """Composite config: `vision_config` (SigLIP, layers kept), `text_config` (Qwen2) and the DTS fields.

    `dts_layout` selects how 4 frames are grouped before DTS and which relative-position convention the
    temporal attention uses: "temporal" (frames stacked on the time axis, Shaw j-i keys) or "released"
    (the released checkpoint's memory-view grouping and transposed i-j key term).
    """

    model_type = "videoxl2"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=SiglipVisionConfig),
        "text_config": SubConfigSpec(config_class=Qwen2Config),
    }

    vision_config: dict | SiglipVisionConfig | None = None
    text_config: dict | Qwen2Config | None = None
    frames_per_group: int = 4
    interp_grid: int = 24
    video_pool: int = 2
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    vision_pad_token_id: int = 151654
    dts_layout: str = "temporal"
    dts_norm_groups: int = 32
    dts_norm_eps: float = 1e-6
    dts_max_relative_position: int = 64
    dts_num_stages: int = 2
    tokenizer: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs) -> None:
        if self.image_mean is None:
            self.image_mean = [0.5, 0.5, 0.5]
        if self.image_std is None:
            self.image_std = [0.5, 0.5, 0.5]
        self.image_mean = [float(v) for v in self.image_mean]
        self.image_std = [float(v) for v in self.image_std]
        super().__post_init__(**kwargs)
        self.vision_config.vision_use_head = False
        self.check()

    @property
    def tokens_per_group(self) -> int:
        """Visual tokens per group of `frames_per_group` frames after DTS and pooling."""
        return (self.interp_grid // self.video_pool) ** 2

    @property
    def image_size(self) -> int:
        """Input frame side length of the vision tower."""
        return int(self.vision_config.image_size)

    @property
    def encoder_grid(self) -> int:
        """Side length of the vision tower's patch grid (image_size // patch_size)."""
        return int(self.vision_config.image_size) // int(self.vision_config.patch_size)

    @property
    def vision_hidden_size(self) -> int:
        """Channels of the vision features (= DTS channels = projector input)."""
        return int(self.vision_config.hidden_size)

    def check(self) -> None:
        """Raise ValueError naming the offending field when the configuration is inconsistent."""

        def positive(name: str, value: object) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"VideoXL2Config.{name} must be a positive integer, got {value!r}")

        for name in ("frames_per_group", "interp_grid", "video_pool", "dts_norm_groups",
                     "dts_max_relative_position", "dts_num_stages"):
            positive(name, getattr(self, name))
        if self.dts_layout not in DTS_LAYOUTS:
            raise ValueError(f"VideoXL2Config.dts_layout must be one of {DTS_LAYOUTS}, got {self.dts_layout!r}")
        if self.interp_grid % self.video_pool:
            raise ValueError(
                f"VideoXL2Config.interp_grid ({self.interp_grid}) must be divisible by video_pool ({self.video_pool})"
            )
        if self.frames_per_group != 2**self.dts_num_stages:
            raise ValueError(
                f"VideoXL2Config.frames_per_group ({self.frames_per_group}) must equal 2 ** dts_num_stages "
                f"({2**self.dts_num_stages}): each DTS stage halves time down to one slice"
            )
        channels = self.vision_hidden_size
        if channels % self.dts_norm_groups:
            raise ValueError(
                f"VideoXL2Config.dts_norm_groups ({self.dts_norm_groups}) must divide the DTS channels "
                f"(vision_config.hidden_size = {channels})"
            )
        if self.image_size < int(self.vision_config.patch_size):
            raise ValueError(
                f"vision_config.image_size ({self.image_size}) must be at least vision_config.patch_size "
                f"({self.vision_config.patch_size})"
            )
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"VideoXL2Config.{name} must have 3 values, got {getattr(self, name)!r}")
        if any(v <= 0 for v in self.image_std):
            raise ValueError(f"VideoXL2Config.image_std must be positive, got {self.image_std!r}")
        vocab = int(self.text_config.vocab_size)
        if not 0 <= self.vision_pad_token_id < vocab:
            raise ValueError(
                f"VideoXL2Config.vision_pad_token_id ({self.vision_pad_token_id}) must lie in "
                f"[0, text_config.vocab_size={vocab})"
            )
