"""``python -m manifests render --config deploy.yaml (--out DIR | --overlay NAME)``.

``--out DIR`` writes the kustomize tree (``kubectl apply -k DIR/overlays/<overlay>``);
``--overlay NAME`` prints that overlay's documents (``| kubectl apply -f -``), no kustomize needed.
``apply``, ``status``, ``diff``, ``delete`` and ``rollout`` work on a cluster (``manifests/commands.py``).
``presets`` lists the model presets a config may name (``predictor.preset``) and the GPUs known;
``presets --config F`` prints the memory arithmetic of F's predictor on each profile.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from manifests.commands import add_commands, run
from manifests.config import DeployConfig
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
    pr = sub.add_parser("presets", help="list the model presets and GPUs; with --config, size its predictor")
    pr.add_argument("--config", type=Path, help="print how this config's preset is sized on each profile")
    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from manifests.config import load_config
    from manifests.presets import listing

    if args.command == "presets" and args.config is None:
        sys.stdout.write(listing())
        return 0
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
    if args.command == "presets":
        return _sizing(config)
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


def _sizing(config: DeployConfig) -> int:
    from manifests.sizing import describe

    if config.predictor.preset is None:
        print("python -m manifests presets: the config names no predictor.preset", file=sys.stderr)
        return 2
    for name in ("cpu", "gpu"):
        footprint = config.footprint(name)
        assert footprint is not None
        print(f"{name} profile: {config.predictor.preset}")
        print(describe(footprint, config.gpu(name) if footprint.on_gpu else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
