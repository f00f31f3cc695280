"""Check a benchmark's annotation files and videos before evaluating.

    python -m data.benchmarks --format mlvu|videomme|lvbench|longvideobench|charades --data PATH \
        [--video-root DIR] [--durations Charades_v1_test.csv] [--strict] [--list N]

Prints the excluded rows (id, reason, detail; the first ``--list`` of them) and the samples whose
video is missing, then, as its last line, one JSON object ``{"format", "source", "layout",
"samples", "excluded": {reason: count}, "missing_videos", ...}`` and exits 0. A file that cannot
be read (or, with ``--strict``, any excluded row) prints one line naming it and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from data.benchmarks import BENCHMARK_READERS, AnnotationError, read_benchmark


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit code (0 read, 2 unreadable / strict failure)."""
    ap = argparse.ArgumentParser(prog="python -m data.benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", required=True, choices=sorted(BENCHMARK_READERS))
    ap.add_argument("--data", required=True, help="annotation file or folder (release or lmms-eval copy)")
    ap.add_argument("--video-root", default=None, help="folder of the videos (default: the annotation's folder)")
    ap.add_argument("--durations", default=None, help="charades: Charades_v1_test.csv with the video lengths")
    ap.add_argument("--strict", action="store_true", help="any excluded row is an error (exit 2)")
    ap.add_argument("--list", type=int, default=20, help="how many excluded rows / missing videos to print")
    args = ap.parse_args(argv)
    if args.durations and args.format != "charades":
        ap.error("--durations is for --format charades")
    import datasets

    datasets.disable_progress_bars()  # keep the output to the listing and the summary line
    opts = {"durations": args.durations} if args.durations else {}
    try:
        read = read_benchmark(args.format, args.data, args.video_root, strict=args.strict, **opts)
    except AnnotationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for e in read.excluded[: args.list]:
        print(f"excluded {e.sample_id}: {e.reason}: {e.detail}")
    if len(read.excluded) > args.list:
        print(f"... {len(read.excluded) - args.list} more excluded rows")
    missing = [s for s in read.samples if s.metadata.get("video_missing")]
    for s in missing[: args.list]:
        print(f"missing video {s.sample_id}: {s.video}")
    if len(missing) > args.list:
        print(f"... {len(missing) - args.list} more missing videos")
    summary = {"format": args.format, "source": read.source, **read.summary()}
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
