"""The synthesis output and its resume state: verified examples appended as JSON lines (flushed and fsynced), beside
them ``<out>.state.json`` (written atomically) with the run's settings, the batches finished per arm and the
generations spent per target; ``Summary`` is what a run reports. Another run's output (other settings) is refused in
one line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenscope import QwenscopeError
from qwenscope.apps.synthesize.inventory import (
    Target,
)
from qwenscope.util import atomic_write

logger = logging.getLogger(__name__)


STATE_VERSION = 1


# ---------------------------------------------------------------- results
@dataclass
class Summary:
    """What a synthesis run produced (the resumed part included)."""

    out: Path
    targets: list[Target]
    arms: list[str]
    attempts: dict[str, int] = field(default_factory=dict)
    """Target key (``hookpoint#id``; ``plain`` for the baseline) -> generations spent."""
    kept: dict[str, int] = field(default_factory=dict)
    """Target key -> verified examples that fire it."""
    seconds: float = 0.0
    """Time spent generating and verifying, over every resume."""

    @property
    def covered(self) -> list[str]:
        return [t.key for t in self.targets if self.kept.get(t.key, 0) > 0]

    @property
    def examples(self) -> int:
        """Verified examples in the output (plain ``keep_all`` records that fire no target left out)."""
        if not self.out.is_file():
            return 0
        return sum(1 for r in _read_records(self.out) if r.get("target") or r.get("targets"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "arms": self.arms,
            "targets": [t.as_dict() for t in self.targets],
            "covered": self.covered,
            "attempts": self.attempts,
            "kept": self.kept,
            "examples": self.examples,
            "seconds": round(self.seconds, 1),
        }

    def text(self) -> str:
        n, c = len(self.targets), len(self.covered)
        share = f" ({c / n:.0%})" if n else ""
        return (
            f"{n} targets, {c} covered{share}, {self.examples} examples kept from "
            f"{sum(self.attempts.values())} generations ({', '.join(self.arms)}) -> {self.out}"
        )


# ---------------------------------------------------------------- the output and its state
def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def record_key(record: dict[str, Any]) -> tuple[str, int]:
    """(target key or ``plain``, attempt): what makes a record unique in a run."""
    target = record.get("target")
    key = f"{target['hookpoint']}#{target['id']}" if target else "plain"
    return key, int(record["attempt"])


class Output:
    """The output JSONL and its state file (see the module doc)."""

    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.state_path = self.path.with_name(self.path.name + ".state.json")
        self.settings = json.loads(json.dumps(settings))
        self.batches: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self.seconds = 0.0
        self.records: list[dict[str, Any]] = []
        self.done: set[tuple[str, int]] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_data = self.path.is_file() and self.path.stat().st_size > 0
        if self.state_path.is_file() and self.path.is_file():
            self._resume()  # also a run that has verified nothing yet: its spent batches stay spent
        elif has_data:
            raise QwenscopeError(
                f"{self.path} already holds data but no {self.state_path.name}: not a synthesis run "
                "this can resume; pass another --out or delete it"
            )
        else:
            self.path.write_text("")
            self._save()

    def _resume(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise QwenscopeError(
                f"{self.state_path} is damaged ({e}); delete it and {self.path} to start over"
            ) from None
        if state.get("settings") != self.settings:
            old = state.get("settings", {})
            diff = next((k for k in {**old, **self.settings} if old.get(k) != self.settings.get(k)), "version")
            raise QwenscopeError(
                f"{self.path} holds a run with other settings ({diff} differs); pass another --out, "
                "or delete it and its .state.json to start over"
            )
        self.batches, self.attempts = dict(state["batches"]), dict(state["attempts"])
        self.seconds = float(state.get("seconds", 0.0))
        self._load_records()
        logger.info(
            "resuming %s: %d examples, %d generations spent", self.path, len(self.records), sum(self.attempts.values())
        )

    def _load_records(self) -> None:
        """Read the records written so far; a last line cut short by a kill is dropped."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        good = 0
        for i, line in enumerate(lines):
            if not line.strip():
                good += len(line) + 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise QwenscopeError(f"{self.path}: line {i + 1} is damaged; remove it and run again") from None
                logger.warning("dropping the incomplete last line of %s (killed while writing it)", self.path)
                with self.path.open("r+b") as f:
                    f.truncate(good)
                break
            good += len(line) + 1
            self.records.append(record)
            self.done.add(record_key(record))

    def _save(self) -> None:
        state = {
            "version": STATE_VERSION,
            "settings": self.settings,
            "batches": self.batches,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
        }
        atomic_write(self.state_path, lambda tmp: tmp.write_text(json.dumps(state, indent=1) + "\n"))

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record and fsync it; False (nothing written) when it is already there."""
        key = record_key(record)
        if key in self.done:
            return False
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.done.add(key)
        return True

    def batch_done(self, key: str, attempts: dict[str, int], seconds: float = 0.0) -> None:
        """Batch ``key`` (an arm) is finished; ``attempts``: the generations it spent per target key."""
        self.seconds += seconds
        self.batches[key] = self.batches.get(key, 0) + 1
        for target, n in attempts.items():
            self.attempts[target] = self.attempts.get(target, 0) + n
        self._save()


# ---------------------------------------------------------------- the schedule
