"""`saescope <command>`: one subcommand per stage, each generated from that stage's config dataclass.

The CLI is the only place that prints; bad input (SaescopeError) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

# command → (module, config class, function taking the config); modules are imported only when used.
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "run": ("saescope.cli.run", "RunConfig", "cli_run", "Run every stage on the embedded default model."),
    "capture": ("saescope.capture.cli", "CaptureConfig", "cli_capture", "Capture activations (corpus or --generate)."),
    "store-info": ("saescope.store.cli", "StoreInfoConfig", "cli_info", "Summarise an activation store."),
    "import-seed": ("saescope.store.cli", "ImportSeedConfig", "cli_import", "Seed-format folder → store."),
    "export-seed": ("saescope.store.cli", "ExportSeedConfig", "cli_export", "Store → seed-format folder."),
    "train": ("saescope.train.cli", "TrainConfig", "cli_train", "Train a sparse autoencoder on a store."),
    "eval": ("saescope.train.cli", "EvalConfig", "cli_eval", "Evaluate a saved SAE on a store (and spliced in the model)."),
    "explain": ("saescope.interp.cli", "ExplainConfig", "cli_explain", "Explain units of a collated dataset."),
    "score": ("saescope.interp.cli", "ScoreConfig", "cli_score", "Simulate and score explanations."),
    "view": ("saescope.viewer.cli", "ViewConfig", "cli_view", "Serve the neuron viewer for a collated folder."),
    "collate": ("saescope.collate.cli", "CollateConfig", "cli_collate", "Write TDB NeuronRecords for neurons, heads, SAE latents."),
}


# Commands whose first positional argument is a directory: the option it stands for.
POSITIONAL = {"view": "--root", "explain": "--root", "score": "--root", "store-info": "--store",
              "import-seed": "--seed", "export-seed": "--store"}


def _usage() -> str:
    lines = ["usage: saescope <command> [options]   (saescope <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<12} {spec[3]}" for name, spec in COMMANDS.items()]
    lines.append("  store info   alias of store-info")
    return "\n".join(lines)


def parse_config(cls: type, argv: Sequence[str], prog: str) -> Any:
    import simple_parsing

    parser = simple_parsing.ArgumentParser(prog=prog, add_config_path_arg=False, description=cls.__doc__)
    parser.add_arguments(cls, dest="cfg")
    return parser.parse_args(list(argv)).cfg


def main(argv: Sequence[str] | None = None) -> int:
    from saescope.errors import SaescopeError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["store", "info"]:
        argv = ["store-info", *argv[2:]]
    if len(argv) >= 2 and argv[0] in POSITIONAL and not argv[1].startswith("-"):
        argv = [argv[0], POSITIONAL[argv[0]], argv[1], *argv[2:]]  # `saescope view DIR`, `store info DIR`, ...
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "version"):
        from saescope import __version__

        print(f"saescope {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"saescope: unknown command '{cmd}'\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=os.environ.get("SAESCOPE_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # --no-serve and --no_serve both work: option names are the dataclass field names, dashes accepted
    rest = [("--" + a[2:].split("=", 1)[0].replace("-", "_") + ("=" + a.split("=", 1)[1] if "=" in a else ""))
            if a.startswith("--") else a for a in rest]
    module, cls_name, fn_name, _ = COMMANDS[cmd]
    try:
        mod = importlib.import_module(module)
        cfg = parse_config(getattr(mod, cls_name), rest, f"saescope {cmd}")
        fn: Callable[[Any], int | None] = getattr(mod, fn_name)
        return int(fn(cfg) or 0)
    except SaescopeError as e:
        print(f"saescope {cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saescope {cmd}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130

