"""Running eager and artifacts over a labelled set through the same task wrappers, side by side.

Eager and every artifact see each image through the runtime's own ``predict`` (the manifest's
preprocessing, then top-k / boxes in image pixels / the mask at image size), so the difference between
their scores is the artifact's accuracy loss and nothing else.  Eager is evaluated once per model.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lightdeploy.errors import UsageError
from lightdeploy.evaluation.data import load_dataset
from lightdeploy.evaluation.metrics import HEADLINE, metric_for


@dataclass
class EvalRow:
    subject: str  # the model name or the artifact folder's name
    model: str
    task: str
    runtime: str  # "eager" or "<backend>/<precision>"
    metrics: dict
    delta: float | None = None  # headline metric minus eager's, same model and data


def _wrapper(runtime, manifest: dict):
    from lightdeploy.runtimes import TASKS

    module, cls = TASKS[manifest["task"]].split(":")
    return getattr(importlib.import_module(module), cls)(runtime, manifest)


def _eager(manifest: dict, model=None):
    from lightdeploy.eager import EagerRuntime
    from lightdeploy.factory import eager_from_manifest

    return _wrapper(EagerRuntime(model if model is not None else eager_from_manifest(manifest), manifest), manifest)


def _score(predictor, data, manifest: dict, advance) -> dict:
    metric = metric_for(data, manifest["num_classes"])
    for item in data.items:
        metric.add(item, predictor.predict(item[0]))
        advance()
    return metric.result()


def evaluate(
    subjects: list[str], data_dir: str | Path, *, allow_unverified: bool = False, progress=None
) -> list[EvalRow]:
    """Rows of eager and artifact scores on ``data_dir``; ``subjects`` are model names or artifact folders.

    ``progress``: a rich Progress (or None) that gets one task per evaluated runtime.
    """
    from lightdeploy import runtimes
    from lightdeploy.eager import eager_manifest
    from lightdeploy.factory import create_model
    from lightdeploy.runtimes.manifest import read_manifest

    rows: list[EvalRow] = []
    eager_scores: dict[str, dict] = {}
    datasets: dict[str, object] = {}

    def run(label: str, predictor, manifest: dict) -> dict:
        key = manifest["model"]
        if key not in datasets:
            datasets[key] = load_dataset(
                data_dir,
                manifest["task"],
                manifest.get("class_names") or [str(i) for i in range(manifest["num_classes"])],
            )
        data = datasets[key]
        task = progress.add_task(label, total=len(data)) if progress is not None else None
        result = _score(
            predictor, data, manifest, (lambda: progress.advance(task)) if task is not None else (lambda: None)
        )
        return result

    for subject in subjects:
        folder = Path(subject)
        if folder.is_dir():
            manifest = read_manifest(folder)
            artifact = runtimes.load(folder, **({"allow_unverified": True} if allow_unverified else {}))
            eager_key = json.dumps(manifest["source"], sort_keys=True)
            if eager_key not in eager_scores:
                eager_scores[eager_key] = run(f"eager {manifest['model']}", _eager(manifest), manifest)
                rows.append(
                    EvalRow(manifest["model"], manifest["model"], manifest["task"], "eager", eager_scores[eager_key])
                )
            scores = run(folder.name, artifact, manifest)
            headline = HEADLINE[manifest["task"]]
            rows.append(
                EvalRow(
                    folder.name,
                    manifest["model"],
                    manifest["task"],
                    f"{manifest['backend']}/{manifest['precision']}",
                    scores,
                    scores[headline] - eager_scores[eager_key][headline],
                )
            )
        else:
            manifest = eager_manifest(subject)
            # The same key an artifact exported from this name with default options records, so a model
            # given beside its artifacts is scored (and listed) once.
            eager_key = json.dumps(_default_source(subject, manifest), sort_keys=True)
            if eager_key in eager_scores:
                continue
            scores = run(f"eager {subject}", _eager(manifest, create_model(subject)), manifest)
            eager_scores[eager_key] = scores
            rows.append(EvalRow(subject, subject, manifest["task"], "eager", scores))
    if not rows:
        raise UsageError("Nothing to evaluate: give model names or artifact folders.")
    return rows


def _default_source(name: str, manifest: dict) -> dict:
    """The manifest ``source`` of an export of registry model ``name`` at its default options."""
    from lightdeploy.factory import DEFAULT_SEED
    from lightdeploy.jobs import registry_source
    from lightdeploy.models.registry import get_spec

    size = tuple(manifest["inputs"][0]["shape"][2:])
    return registry_source(get_spec(name), num_classes=None, input_size=size, weights=None, seed=DEFAULT_SEED)


def write_json(rows: list[EvalRow], path: str | Path) -> None:
    Path(path).write_text(json.dumps([asdict(r) for r in rows], indent=2))


def render_table(rows: list[EvalRow]):
    from rich.table import Table

    table = Table(title="accuracy on the labelled set (delta: artifact minus eager)")
    for col in ("subject", "runtime", "metric", "value", "delta"):
        table.add_column(col, overflow="fold")
    for r in rows:
        headline = HEADLINE[r.task]
        others = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.metrics.items() if k != headline
        )
        delta = "" if r.delta is None else f"{r.delta:+.4f}"
        table.add_row(r.subject, r.runtime, f"{headline} ({others})", f"{r.metrics[headline]:.4f}", delta)
    return table
