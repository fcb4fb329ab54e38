"""Fingerprint every finished run under a runs directory, and compare two fingerprints run by run.

A refactor that must not change results is checked by training the same jobs before and after it (e.g. the
default ``sparsetrain train`` and ``sparsetrain reproduce --quick``) and comparing the fingerprints: for every
directory holding a ``masks.pt`` (harness runs, lottery levels and controls), the checksum of its masks and its
metrics (``metrics.jsonl`` per epoch, or a lottery stage's ``metrics.json``) without wall-clock fields. Keys are
paths relative to the runs directory, config hashes included, so a changed run identity shows as a run found on
one side only.

    PYTHONPATH=src python benchmarks/fingerprint.py RUNS_DIR > after.json
    PYTHONPATH=src python benchmarks/fingerprint.py --compare before.json after.json

``--compare`` prints one line per differing run and a summary line; it exits 1 when any run differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from sparsetrain.distributed import masks_checksum

#: Fields that measure time, not results.
WALL_CLOCK = frozenset({"time", "wall_time", "elapsed"})


def _results(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in WALL_CLOCK}


def fingerprint(root: Path) -> dict[str, dict[str, Any]]:
    """Run directory (relative to ``root``) -> {"masks": checksum, "metrics": records without wall-clock}."""
    out: dict[str, dict[str, Any]] = {}
    for masks_file in sorted(root.rglob("masks.pt")):
        where = masks_file.parent
        entry: dict[str, Any] = {"masks": masks_checksum(torch.load(masks_file, map_location="cpu",
                                                                    weights_only=True))}
        per_epoch = where / "metrics.jsonl"
        if per_epoch.exists():
            entry["metrics"] = [_results(json.loads(line)) for line in per_epoch.read_text().splitlines()
                                if line.strip()]
        stage = where / "metrics.json"
        if stage.exists():
            entry["metrics"] = _results(json.loads(stage.read_text()))
        out[str(where.relative_to(root))] = entry
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> int:
    """Print the runs that differ (or exist on one side only) and a summary; return how many differ."""
    same = differ = 0
    for key in sorted(set(before) | set(after)):
        if key not in before or key not in after:
            print(f"only {'after' if key not in before else 'before'}: {key}")
            differ += 1
        elif before[key] != after[key]:
            fields = [f for f in ("masks", "metrics") if before[key].get(f) != after[key].get(f)]
            print(f"different ({', '.join(fields)}): {key}")
            differ += 1
        else:
            same += 1
    print(f"{same} identical, {differ} different")
    return differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a runs directory; with --compare, two JSON files")
    parser.add_argument("--compare", action="store_true", help="compare two fingerprints (before.json after.json)")
    args = parser.parse_args()
    if args.compare:
        if len(args.paths) != 2:
            parser.error("--compare takes two fingerprint files: before.json after.json")
        before, after = (json.loads(Path(p).read_text()) for p in args.paths)
        return 1 if compare(before, after) else 0
    if len(args.paths) != 1:
        parser.error("give one runs directory")
    json.dump(fingerprint(Path(args.paths[0])), sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
