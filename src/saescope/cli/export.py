"""`saescope export neuronpedia RUN_DIR OUT`, `saescope export saelens RUN_DIR` (a pretrained_saes.yaml entry),
`saescope export circuit-tracer DIR OUT` (transcoders in circuit-tracer's local layout) and `saescope export tdb ROOT
OUT` (collated records as Transformer-Debugger JSON folders)."""

from __future__ import annotations

USAGE = """usage: saescope export neuronpedia RUN_DIR OUT [options]   Neuronpedia's export layout (--help for options)
       saescope export saelens RUN_DIR [options]           a pretrained_saes.yaml entry for the run's SAEs
       saescope export circuit-tracer DIR OUT [--scan S]   transcoders (saescope, circuit-tracer or Gemma Scope 2
                                                           layout) → circuit-tracer's config.yaml + safetensors
       saescope export tdb ROOT OUT                        collated records → TDB's {dataset}/{layer}/{index}.json"""


def main(argv: list[str]) -> int:
    from saescope.cli import parse

    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("neuronpedia", "saelens", "circuit-tracer", "tdb"):
        print(USAGE)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    what, rest = argv[0], argv[1:]
    if what == "circuit-tracer":
        return circuit_tracer(rest)
    if what == "tdb":
        return tdb(rest)
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


def circuit_tracer(argv: list[str]) -> int:
    from saescope.errors import SaescopeError
    from saescope.sae.transcoder_io import export_circuit_tracer, load_transcoders

    scan = ""
    if "--scan" in argv:
        i = argv.index("--scan")
        if i + 1 >= len(argv):
            raise SaescopeError("--scan needs a value (the name circuit-tracer shows for these transcoders)")
        scan = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if len(argv) != 2:
        raise SaescopeError("usage: saescope export circuit-tracer DIR OUT [--scan NAME]")
    ts = load_transcoders(argv[0])
    out = export_circuit_tracer(ts, argv[1], scan=scan)
    print(f"wrote {'a cross-layer transcoder' if ts.is_clt else f'{len(ts.layers)} transcoders'} to {out}")
    return 0


def tdb(argv: list[str]) -> int:
    from saescope.errors import SaescopeError
    from saescope.export.tdb import export_tdb

    if len(argv) != 2 or argv[0].startswith("-"):
        raise SaescopeError("usage: saescope export tdb ROOT OUT (ROOT: a collated folder, e.g. runs/default/collated)")
    written = export_tdb(argv[0], argv[1])
    print(f"wrote {len(written)} datasets as TDB JSON folders under {argv[1]}")
    return 0
