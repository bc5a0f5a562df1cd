"""``leanspike presets``: the shipped experiment presets (one per paper experiment).

``leanspike presets`` lists them; ``leanspike presets NAME`` prints one resolved
config as YAML (what ``leanspike train --preset NAME`` would run).
"""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list the experiment presets, or show one")
    p.add_argument("name", nargs="?", default=None, help="show this preset's resolved config")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.config import to_dict, to_yaml
    from ..experiments.presets import describe_presets, load_preset

    if args.name is not None:
        cfg = load_preset(args.name)
        print(json.dumps(to_dict(cfg), indent=2) if args.json else to_yaml(cfg), end="" if not args.json else "\n")
        return 0
    rows = describe_presets()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, ensure_ascii=False))
        return 0
    width = max(len(r.name) for r in rows)
    print(f"{'preset':<{width}}  {'dataset':<12}{'model':<14}{'method':<18}{'T':>4}{'epochs':>7}")
    for r in rows:
        print(f"{r.name:<{width}}  {r.dataset:<12}{r.model:<14}{r.method:<18}{r.T:>4}{r.epochs:>7}")
    print(f"\n{len(rows)} presets; `leanspike presets NAME` shows one, "
          "`leanspike train --preset NAME --data-root PATH` runs it.")
    return 0
