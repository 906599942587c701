"""`saescope <command>`: the front door. One small module per command (or per few), each generated from its
stage's config dataclass; every module imports its stage inside the command function, so `saescope --help` stays
fast. The CLI is the only place that prints; bad input (SaescopeError) becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from saescope.cli import capture, collate, datasets, debug, export, graph, interp, run, search, store, train, view

Command = Callable[[list[str]], int]

# command → (function taking its argv, one-line help)
COMMANDS: dict[str, tuple[Command, str]] = {
    "run": (run.main, "Run every stage on the embedded default model (reusing what is up to date)."),
    "capture": (capture.main, "Capture activations (corpus into a store, or --generate into the seed format)."),
    "store-info": (store.info, "Summarise an activation store and verify its shards."),
    "import-seed": (store.import_seed, "Seed-format folder → store."),
    "export-seed": (store.export_seed, "Store → seed-format folder."),
    "train": (train.train, "Train a sparse autoencoder on a store."),
    "eval": (train.evaluate, "Evaluate a saved SAE on a store (and spliced into the model)."),
    "eval-replacement": (train.eval_replacement, "Replace every MLP by its transcoder: CE, ΔCE, KL, top-1 agreement."),
    "collate": (collate.main, "Write TDB NeuronRecords for MLP neurons, heads, SAE latents."),
    "explain": (interp.explain, "Explain units of a collated dataset."),
    "score": (interp.score, "Simulate and score explanations."),
    "view": (view.main, "Serve the neuron viewer for a collated folder, a TDB-layout folder/URL or a registry name."),
    "export": (export.main, "Write a run's SAEs for other tools: Neuronpedia's export layout, a SAELens registry entry."),
    "datasets": (datasets.list_public, "List the seed's public TDB datasets by registry name."),
    "summarize": (datasets.summarize, "Fetch a TDB-layout dataset's records and write its unit table."),
    "search": (search.main, "The units that fire most on every token of a text, across all collated datasets."),
    "debug": (debug.main, "Why does the model say this? Rank, ablate and trace the nodes behind a next token."),
    "graph": (graph.main, "Attribution graph of a prompt under transcoders (circuit tracing): graph JSON for Neuronpedia."),
}

# Commands whose first positional argument is a directory: the option it stands for.
POSITIONAL = {"view": "--root", "explain": "--root", "score": "--root", "summarize": "--root", "store-info": "--store",
              "import-seed": "--seed", "export-seed": "--store"}


def usage() -> str:
    lines = ["usage: saescope <command> [options]   (saescope <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<12} {helptext}" for name, (_, helptext) in COMMANDS.items()]
    lines.append("  store info   alias of store-info")
    return "\n".join(lines)


def _formatter() -> type:
    """simple_parsing's help formatter, with a literal '%' in a field docstring ("0 %)") kept as text instead of
    being taken for an argparse format directive (which crashed --help)."""
    import re

    from simple_parsing.help_formatter import SimpleHelpFormatter

    class Formatter(SimpleHelpFormatter):
        """Reads like a tool's help: sections titled by stage ("trainer options", not "TrainerConfig ['cfg']"),
        each text once, no "(default: )" for options whose default is empty."""

        _seen: set[str] = set()

        def _get_help_string(self, action: Any) -> str:
            text = super()._get_help_string(action) or ""
            if action.default in ("", None) or action.default is False and "--no" in " ".join(action.option_strings):
                text = re.sub(r"\s*\(default: %\(default\)s\)", "", text)
            return re.sub(r"%(?!\()", "%%", text)

        def _format_action_invocation(self, action: Any) -> str:
            # a bool option is shown once: `--null_baseline bool` (the `--nonull_baseline` spelling still works)
            shown = [o for o in action.option_strings if not (o.startswith("--no") and "--" + o[4:] in action.option_strings)]
            if shown != list(action.option_strings):
                import copy

                action = copy.copy(action)
                action.option_strings = shown
            return super()._format_action_invocation(action)

        def start_section(self, heading: str | None) -> None:
            if heading and "[" in heading:
                name = re.sub(r"\s*\[.*\]$", "", heading).removesuffix("Config").removesuffix("Options")
                heading = re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower() + " options"
            super().start_section(heading)

        def add_text(self, text: str | None) -> None:
            if text and text.strip() in Formatter._seen:
                return
            if text:
                Formatter._seen.add(text.strip())
            super().add_text(text)

    Formatter._seen = set()
    return Formatter


def worker_exit() -> None:
    """A non-zero torchrun rank, whose work is done (rank 0 writes and reports): flush and leave without the
    interpreter's teardown, where worker ranks intermittently aborted in native threads (SIGABRT, exit code -6)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def parse(cls: type, argv: Sequence[str], prog: str) -> Any:
    """argv → an instance of the config dataclass `cls` (field docstrings are the --help text; Literal fields
    list their choices and refuse others; options that collide between nested stages are prefixed, e.g.
    --capture.max_tokens). Dashed spellings of option names (--no-serve) are accepted."""
    import simple_parsing

    argv = [("--" + a[2:].split("=", 1)[0].replace("-", "_") + ("=" + a.split("=", 1)[1] if "=" in a else ""))
            if a.startswith("--") else a for a in argv]
    parser = simple_parsing.ArgumentParser(prog=prog, add_config_path_arg=False, description=cls.__doc__,
                                           formatter_class=_formatter())
    parser.add_arguments(cls, dest="cfg")

    def error(message: str) -> None:  # argparse's usage block + message → the CLI's one line, exit 2
        from saescope.errors import SaescopeError

        raise SaescopeError(f"{message} (see {prog} --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(list(argv)).cfg


def main(argv: Sequence[str] | None = None) -> int:
    from saescope.errors import SaescopeError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["store", "info"]:
        argv = ["store-info", *argv[2:]]
    if argv[:1] == ["store"]:
        print("usage: saescope store info DIR      (also: saescope import-seed, saescope export-seed)\n\n"
              "  store info   summarise an activation store and verify its shards")
        return 0 if argv[1:2] in ([], ["-h"], ["--help"]) else 2
    if len(argv) >= 2 and argv[0] in POSITIONAL and not argv[1].startswith("-"):
        argv = [argv[0], POSITIONAL[argv[0]], argv[1], *argv[2:]]  # `saescope view DIR`, `store info DIR`, ...
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("--version", "version"):
        from saescope import __version__

        print(f"saescope {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"saescope: unknown command '{cmd}'\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=os.environ.get("SAESCOPE_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(COMMANDS[cmd][0](rest) or 0)
    except SaescopeError as e:
        print(f"saescope {cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saescope {cmd}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
