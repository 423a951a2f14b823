"""mkdocs hook: serve the plots and HTML reports of ``bench/perf/results/`` and ``experiments/*/results/`` at their
repository paths, so a results page shows ``![plot](../experiments/sasft/results/sasft.png)``."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = ("bench/perf/results/*.png", "experiments/*/results/*.png", "experiments/*/results/*.html")


def on_files(files: Files, config) -> Files:
    for pattern in PATTERNS:
        for path in sorted(ROOT.glob(pattern)):
            uri = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
