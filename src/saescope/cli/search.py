"""`saescope search "text"`: the units that fire most on every token of a text, across all collated datasets."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from saescope.cli import parse
    from saescope.errors import SaescopeError
    from saescope.explore import search
    from saescope.viewer.config import SearchConfig
    from saescope.viewer.data import DataRoot
    from saescope.viewer.hub import ModelHub

    if argv and not argv[0].startswith("-"):
        argv = ["--text", argv[0], *argv[1:]]
    cfg = parse(SearchConfig, argv, "saescope search")
    if not cfg.text.strip():
        raise SaescopeError('--text: give a text, e.g. saescope search "The Eiffel Tower is in Paris"')
    data = DataRoot(cfg.root)
    models = [m["model"] for m in data.manifests() if not m.get("external")]
    if not models:
        raise SaescopeError(f"{cfg.root}: no collated model folder (<model>/manifest.json); run `saescope run` first")
    name = cfg.collated_model or models[0]
    hub = ModelHub(data, cfg.model or None)
    if not 0 <= cfg.max_density <= 1:
        raise SaescopeError(f"--max_density {cfg.max_density}: a fraction from 0 to 1 (1 keeps every unit)")
    res = search(hub.model(name), hub.search_sources(name), cfg.text, max(1, cfg.per_token),
                 max_density=cfg.max_density)
    if res["left_out"]:
        print(f"({res['left_out']} units firing on more than {cfg.max_density:g} of tokens left out; "
              "--max_density 1 keeps them)")
    for tok, units in zip(res["tokens"], res["units"]):
        print(f"{tok!r}")
        for u in units:
            print(f"    {u['relative']:5.2f}  {u['dataset']:<34} {u['index']:>6}  {u['explanation'] or ''}"[:150])
    return 0
