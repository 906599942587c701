"""`saescope export tdb ROOT OUT`: collated records as Transformer-Debugger folders, one NeuronRecord JSON per unit.

Collation stores each dataset compactly (`saescope.compact_records`); TDB's loaders and other tools read
`{dataset}/{layer}/{index}.json`. The export writes, for every dataset of every model folder under ROOT,
`OUT/<model>/<dataset>/<layer>/<index>.json` plus the dataset's summary.json and histogram.safetensors, and the
model's manifest.json last: exactly what `saescope collate --records json` writes; where a dataset was scored, its
explanations too, as `OUT/<model>/explanations/<dataset>/<index>.jsonl` (TDB's layout: one NeuronSimulationResults
per unit, the offline baseline's rebuilt) beside explanations.json and scores.json. Each dataset folder is written
under a temporary name and renamed into place, so a killed export never leaves a half-written dataset.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from saescope.errors import SaescopeError
from saescope.io import atomic_dir, read_json, write_json
from saescope.records import open_records

log = logging.getLogger(__name__)

COPIED = ("summary.json", "histogram.safetensors")
"""Files of a dataset folder the export carries over as they are."""


def model_folders(root: str | Path) -> list[Path]:
    """The collated model folders (each holding manifest.json) at or under `root`."""
    root = Path(root)
    if (root / "manifest.json").is_file():
        return [root]
    found = sorted(m.parent for m in root.glob("*/manifest.json"))
    if not found:
        raise SaescopeError(f"{root}: no collated records (no manifest.json here or in <model>/ folders); "
                            f"pass the --out folder of `saescope collate` or a run's collated/ folder")
    return found


def export_tdb(root: str | Path, out: str | Path) -> list[Path]:
    """Write every dataset under `root` as TDB JSON folders under `out`; returns the dataset folders written."""
    from tqdm.auto import tqdm

    out = Path(out)
    written = []
    for mdir in model_folders(root):
        manifest = read_json(mdir / "manifest.json", "collated manifest")
        if out.resolve() == mdir.parent.resolve():
            raise SaescopeError(f"{out}: the export would overwrite the collated records it reads; choose another OUT")
        datasets = [d for d in manifest.get("datasets", []) if not d.get("remote")]
        for d in datasets:
            src, dst = mdir / d["path"], out / mdir.name / d["path"]
            records = open_records(src)
            n = int(d.get("units") or 0)
            with atomic_dir(dst) as tmp:
                for i in tqdm(range(n), desc=f"export {d['path']}", unit="rec", leave=False):
                    try:
                        text = records.record_text(i)
                    except FileNotFoundError:
                        continue  # a unit the dataset has no record for (external datasets may have gaps)
                    (tmp / f"{i}.json").write_text(text, encoding="utf-8")
                for name in COPIED:
                    if (src / name).is_file():
                        shutil.copyfile(src / name, tmp / name)
            written.append(dst)
            export_explanations(mdir, d["path"], out / mdir.name)
            log.info("exported %s (%d records) to %s", d["path"], n, dst)
        write_json(out / mdir.name / "manifest.json",
                   {**manifest, "datasets": [{**d, "records": "json"} for d in datasets]})
    return written


def export_explanations(mdir: Path, ds: str, out_model: Path) -> int:
    """The dataset's explanations in TDB's layout, `explanations/<dataset>/<index>.jsonl` (one NeuronSimulationResults
    per scored unit: the baseline's rebuilt, which saescope does not keep as files) beside explanations.json and
    scores.json; returns the units written (0 where the dataset was never scored)."""
    from saescope.interp.outputs import Simulations

    src = mdir / "explanations" / ds
    if not (src / "scores.json").is_file():
        return 0
    scored = [int(i) for i, v in read_json(src / "scores.json", "scores file").get("units", {}).items()
              if v.get("score") is not None]
    sims, n = Simulations(mdir, ds), 0
    with atomic_dir(out_model / "explanations" / ds) as tmp:
        for name in ("explanations.json", "scores.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        for i in sorted(scored):
            text = sims.text(i)
            if text is not None:
                (tmp / f"{i}.jsonl").write_text(text + "\n", encoding="utf-8")
                n += 1
    log.info("exported the explanations of %s (%d simulations)", ds, n)
    return n
