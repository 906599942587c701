"""`saescope export neuronpedia RUN_DIR OUT` and `saescope export saelens RUN_DIR` (a pretrained_saes.yaml entry)."""

from __future__ import annotations

USAGE = """usage: saescope export neuronpedia RUN_DIR OUT [options]   Neuronpedia's export layout (--help for options)
       saescope export saelens RUN_DIR [options]           a pretrained_saes.yaml entry for the run's SAEs"""


def main(argv: list[str]) -> int:
    from saescope.cli import parse

    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("neuronpedia", "saelens"):
        print(USAGE)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    what, rest = argv[0], argv[1:]
    if what == "neuronpedia":
        from saescope.export.neuronpedia import NeuronpediaExportConfig, export_neuronpedia

        if rest and not rest[0].startswith("-"):
            rest = ["--run", rest[0], *(["--out", rest[1]] if len(rest) > 1 and not rest[1].startswith("-") else []),
                    *rest[2 if len(rest) > 1 and not rest[1].startswith("-") else 1:]]
        for out in export_neuronpedia(parse(NeuronpediaExportConfig, rest, "saescope export neuronpedia")):
            print(f"wrote {out}")
        return 0
    from saescope.export.saelens import SAELensEntryConfig, saelens_entry

    if rest and not rest[0].startswith("-"):
        rest = ["--run", rest[0], *rest[1:]]
    print(saelens_entry(parse(SAELensEntryConfig, rest, "saescope export saelens")), end="")
    return 0
