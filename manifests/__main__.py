"""``python -m manifests render --config deploy.yaml (--out DIR | --overlay NAME)``.

``--out DIR`` writes the kustomize tree (``kubectl apply -k DIR/overlays/<overlay>``);
``--overlay NAME`` prints that overlay's documents (``| kubectl apply -f -``), no kustomize needed.
``apply``, ``status``, ``diff``, ``delete`` and ``rollout`` work on a cluster (``manifests/commands.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from manifests.commands import add_commands, run
from manifests.render import OVERLAYS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m manifests", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render the manifests for one deploy config")
    r.add_argument("--config", type=Path, required=True, help="deploy config (see manifests/examples/)")
    target = r.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write the kustomize tree (base, components, overlays) here")
    target.add_argument("--overlay", choices=OVERLAYS, help="print this overlay's documents to stdout")
    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from manifests.config import load_config
    from manifests.render import dump, overlay_documents, render_tree, write_tree

    try:
        config = load_config(args.config)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        print(f"python -m manifests: {args.config}: invalid {where}: {first['msg']}", file=sys.stderr)
        return 2
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"python -m manifests: {args.config}: {err}", file=sys.stderr)
        return 2
    if args.command != "render":
        return run(args, config)
    if args.overlay:
        try:
            docs = overlay_documents(config, args.overlay)
        except ValueError as err:  # a config this overlay cannot render (an oci:// model without KServe)
            print(f"python -m manifests: {args.config}: {err}", file=sys.stderr)
            return 2
        sys.stdout.write(dump(docs))
        return 0
    written = write_tree(render_tree(config), args.out, str(args.config))
    print(f"wrote {len(written)} files under {args.out}; apply with: kubectl apply -k {args.out}/overlays/<overlay>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
