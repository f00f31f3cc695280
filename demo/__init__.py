"""The demo: `make demo` / `python -m demo` trains the tiny model through the four stages on generated
videos, evaluates full attention against chunked prefill + bi-level decoding, sweeps longer videos and
writes a report (see docs/demo.md).

Modules: `run` (the whole demo, `python -m demo`), `stages` (the four stages, in `ranks` processes),
`evaluate` (benches x inference modes, needle sweep, blind baseline), `overrides` (settings as Hydra
overrides), `report` (metrics.json, report.md, stdout summary), `plots` (PNG figures; needs matplotlib,
the `demo` extra) and `demo.yaml` (every demo setting). The training packages never import this one.
"""
