"""Evaluation of Video-XL-2-style checkpoints on benchmark and generated data.

Modules: `evaluation.config` (typed conf/eval), `evaluation.prompts` (prompt per benchmark and
protocol), `evaluation.answers` (output parsing), `evaluation.scoring` (metrics and the benchmarks'
aggregations), `evaluation.runner` (sample loading, generation loop, rank gathering, the entry point
``python -m evaluation``, also reachable as ``python -m train.evaluate``).
"""
