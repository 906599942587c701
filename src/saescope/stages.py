"""Stage reuse that cannot lie: each stage of `saescope run` writes the config that produced it next to its output.

`<stage dir>/stage.json` holds the stage's name, its config (only what changes the output: no devices, no
ports), the fingerprints of the stages it read, its own fingerprint (a hash of all of that) and whether it
finished. A re-run reuses a stage only when the fingerprint matches and the stage finished; it resumes a stage
that was started with the same fingerprint and killed; otherwise it clears the stage's output and recomputes it.
Because a fingerprint includes its inputs' fingerprints, recomputing a stage recomputes everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from saescope.io import read_json, write_json

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
Decision = Literal["reuse", "resume", "new", "changed"]


def fingerprint(config: dict[str, Any], inputs: dict[str, str]) -> str:
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, with old → new."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} → {b!r}")
    return out


@dataclass
class Stage:
    """One stage's output folder and the config that (re)produces it."""

    name: str
    path: Path
    config: dict[str, Any]
    inputs: dict[str, str]
    """Upstream stage name → its fingerprint."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.config, self.inputs)

    def _saved(self) -> dict[str, Any] | None:
        f = self.path / STAGE_FILE
        if not f.is_file():
            return None
        try:
            saved = read_json(f)
        except Exception:  # an unreadable marker is no evidence of anything: recompute
            return None
        return saved if isinstance(saved, dict) else None

    def decide(self) -> tuple[Decision, str]:
        """What a re-run does with this stage, and the one line that says why."""
        saved = self._saved()
        if saved is None:
            if self.path.exists() and any(self.path.iterdir()):
                return "changed", f"{self.name}: {self.path} holds output of unknown options; recomputing it"
            return "new", f"{self.name}: computing"
        if saved.get("fingerprint") == self.fingerprint:
            if saved.get("complete"):
                return "reuse", f"{self.name}: up to date in {self.path}"
            return "resume", f"{self.name}: resuming the interrupted stage in {self.path}"
        what = _diff(saved.get("config", {}), self.config)
        what += [f"input {k} changed" for k in sorted(self.inputs) if saved.get("inputs", {}).get(k) != self.inputs[k]]
        return "changed", f"{self.name}: {'; '.join(what) or 'options changed'}; recomputing it and everything downstream"

    def same_inputs(self) -> bool:
        """True when the saved stage read the same inputs as this one (only its own options differ)."""
        saved = self._saved()
        return saved is not None and saved.get("inputs") == self.inputs

    def begin(self, decision: Decision, keep: bool = False) -> None:
        """Clear a stale output (changed, unless `keep`: the stage merges into it) and mark the stage started."""
        if decision == "changed" and self.path.exists() and not keep:
            shutil.rmtree(self.path)
        self._write(complete=False)

    def finish(self) -> None:
        self._write(complete=True)

    def _write(self, complete: bool) -> None:
        write_json(self.path / STAGE_FILE, {"stage": self.name, "fingerprint": self.fingerprint,
                                            "complete": complete, "config": self.config, "inputs": self.inputs})
