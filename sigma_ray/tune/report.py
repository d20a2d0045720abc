"""The sweep's report, from its Optuna study: a ranked summary table (printed and ``summary.csv``), the best trial's
pretraining config (``best_config.yaml``, a full :class:`PretrainConfig` that ``experiments/pretrain.py`` accepts as
is) and PNG plots: ``optimization_history.png``, ``param_importances.png`` and ``params.png`` (the score against each
parameter). Scores are the kNN probe's top-1 accuracy on the val split, in percent.

The study is the record of every trial (Tune's per-trial results sit beside it in the sweep directory): a trial's
intermediate scores are keyed by optimizer step, ASHA's early stops are PRUNED trials, failures FAIL.
"""
from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from sigma_ray.infra.config import to_dict
from sigma_ray.runs.files import is_uri
from sigma_ray.train.config import PretrainConfig
from sigma_ray.tune.config import SCORES, TUNE_ID_ATTR, SweepConfig, apply_params

BEST_CONFIG = "best_config.yaml"
SUMMARY_CSV = "summary.csv"
MIN_TRIALS_FOR_IMPORTANCE = 4     # fewer complete trials: importances fall back to rank correlation

_STATES = {
    optuna.trial.TrialState.COMPLETE: "complete",
    optuna.trial.TrialState.PRUNED: "stopped early",
    optuna.trial.TrialState.FAIL: "failed",
    optuna.trial.TrialState.RUNNING: "cut off",
    optuna.trial.TrialState.WAITING: "waiting",
}


@dataclass
class TrialRow:
    """One trial: Optuna's number, Tune's trial id, the sampled params, its last score (percent, None without a
    probe), the optimizer steps it ran (its last probe's step) and its state (complete / stopped early / failed /
    cut off)."""

    number: int
    tune_id: str
    params: dict[str, Any]
    score: float | None
    steps: int
    state: str
    scores: dict[int, float] = field(default_factory=dict)   # step -> score

    @property
    def stopped_early(self) -> bool:
        return self.state == "stopped early"


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """The study's trials, ranked: full-length trials by score, then early-stopped ones by their last score
    (ASHA stopped them for trailing at a rung), then those without a score."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        scores = {int(k): float(v) for k, v in sorted(t.intermediate_values.items())}
        last_step = max(scores) if scores else 0
        score = t.value if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None else \
            scores.get(last_step)
        rows.append(TrialRow(t.number, str(t.user_attrs.get(TUNE_ID_ATTR, "")), dict(t.params), score, last_step,
                             _STATES.get(t.state, t.state.name.lower()), scores))

    def key(r: TrialRow) -> tuple:
        return (r.score is None, r.state != "complete", -(r.score or 0.0), r.number)

    return sorted(rows, key=key)


@dataclass
class SweepReport:
    config: SweepConfig
    base: PretrainConfig               # the base pretraining run (resolved paths)
    total_steps: int                   # a full-length trial's optimizer steps
    finished: bool                     # False: the driver was interrupted

    def __post_init__(self) -> None:
        storage = optuna.storages.RDBStorage(self.config.study_url)
        self.study = optuna.load_study(study_name=self.config.name, storage=storage)
        self.rows = trial_rows(self.study)

    @property
    def best(self) -> TrialRow | None:
        return next((r for r in self.rows if r.score is not None), None)


def format_table(rows: list[TrialRow], params: list[str], score: str = SCORES[0]) -> str:
    """A fixed-width table: rank, trial, each param, the score (named ``score``), steps run, stopped early."""
    header = ["rank", "trial", *params, score, "steps", "stopped early", "state"]
    lines = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), f"{r.number} ({r.tune_id})" if r.tune_id else str(r.number)]
        cells += [_fmt(r.params.get(p)) for p in params]
        cells += ["-" if r.score is None else f"{r.score:.2f}", str(r.steps), "yes" if r.stopped_early else "no",
                  r.state]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_pretrain_config(report: SweepReport) -> PretrainConfig | None:
    """The base run with the best trial's params, named ``<sweep>_best``: the full-length run to launch next."""
    from sigma_ray.infra.config import from_dict

    best = report.best
    if best is None:
        return None
    data = apply_params(report.base, best.params)
    data["name"] = f"{report.config.name}_best"
    return from_dict(PretrainConfig, data)


def write_best_config(report: SweepReport, path: Path) -> Path | None:
    config = best_pretrain_config(report)
    if config is None:
        return None
    best = report.best
    note = "a full-length trial" if best.state == "complete" else "no trial ran to the end: an early-stopped trial"
    head = (f"# Best of sweep {report.config.name}: trial {best.number} ({best.tune_id}), "
            f"{report.config.probe.score} = {best.score:.2f}% after {best.steps} steps ({note}).\n"
            f"# Params: {', '.join(f'{k}={_fmt(v)}' for k, v in best.params.items())}\n"
            f"#   python experiments/pretrain.py --config {path}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def importance_evaluator() -> tuple[optuna.importance.BaseImportanceEvaluator, str]:
    """The evaluator of Optuna's parameter importances and its name for the plot: PED-ANOVA (made for few
    trials; it needs no model fit), passed explicitly so the label cannot drift from Optuna's default."""
    return optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"


def importances(study: optuna.Study, rows: list[TrialRow], params: list[str]) -> tuple[dict[str, float], str]:
    """Parameter importances and how they were computed: :func:`importance_evaluator`'s over the complete trials
    when there are at least MIN_TRIALS_FOR_IMPORTANCE of them, else |Spearman rank correlation| of each parameter
    with the score over every scored trial (early-stopped ones at their last score); ({}, reason) with under 3."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE:
        evaluator, name = importance_evaluator()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)
            # PED-ANOVA warns and returns equal importances when its quantiles cannot tell trials apart
            if not any("importances will be equal" in str(w.message) for w in caught):
                return dict(values), f"Optuna importance ({name}), {len(complete)} complete trials"
        except (ValueError, RuntimeError):   # e.g. a parameter missing from some trials: use the fallback
            pass
    scored = [r for r in rows if r.score is not None and all(p in r.params for p in params)]
    if len(scored) < 3:
        return {}, f"{len(scored)} scored trial(s): too few for importances"
    score = _ranks(np.array([r.score for r in scored], dtype=float))
    out = {}
    for p in params:
        x = _ranks(np.array([float(r.params[p]) for r in scored]))
        out[p] = 0.0 if x.std() == 0 or score.std() == 0 else abs(float(np.corrcoef(x, score)[0, 1]))
    return out, f"|Spearman rank correlation| with the score, {len(scored)} scored trials (too few for Optuna's)"


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank."""
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    for v in np.unique(x):
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def _figure(width: float, height: float):
    """A figure on the Agg canvas (headless; never touches pyplot's global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


_STYLE = {"complete": ("tab:blue", "o"), "stopped early": ("tab:orange", "v"), "cut off": ("tab:gray", "s")}


def plot_history(rows: list[TrialRow], path: Path, score: str = SCORES[0]) -> Path:
    """Each trial's score by trial number, marked by state, with the best complete score so far."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for state, (color, marker) in _STYLE.items():
        pts = [(r.number, r.score) for r in rows if r.state == state and r.score is not None]
        if pts:
            ax.scatter(*zip(*pts), c=color, marker=marker, label=state, zorder=3)
    complete = sorted((r.number, r.score) for r in rows if r.state == "complete" and r.score is not None)
    if complete:
        best = list(np.maximum.accumulate([s for _, s in complete]))
        last = max(r.number for r in rows)   # carry the line to the last trial
        ax.step([n for n, _ in complete] + [last], best + best[-1:], where="post", color="tab:red",
                label="best complete so far")
    failed = [r.number for r in rows if r.state == "failed"]
    if failed:
        ax.scatter(failed, [0.0] * len(failed), c="black", marker="x", label="failed", zorder=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{score} (%)")
    ax.set_title("optimization history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_importances(values: dict[str, float], method: str, path: Path) -> Path:
    fig = _figure(6, 0.6 * max(len(values), 2) + 1.5)
    ax = fig.add_subplot()
    if values:
        names = sorted(values, key=values.get)
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance")
    else:
        ax.text(0.5, 0.5, method, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("parameter importances\n" + method.replace(", ", "\n", 1), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_params(rows: list[TrialRow], config: SweepConfig, path: Path) -> Path:
    """The score against each searched parameter (log axes where the search is log-uniform)."""
    ranges = config.search.ranges()
    n = len(ranges)
    cols = min(n, 3)
    fig = _figure(4 * cols, 3.2 * math.ceil(n / cols))
    for i, (name, rng) in enumerate(ranges.items()):
        ax = fig.add_subplot(math.ceil(n / cols), cols, i + 1)
        for state, (color, marker) in _STYLE.items():
            pts = [(r.params[name], r.score) for r in rows
                   if r.state == state and r.score is not None and name in r.params]
            if pts:
                ax.scatter(*zip(*pts), c=color, marker=marker, label=state)
        if rng.log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())   # log minor labels crowd a short range
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=isinstance(rng.low, int)))
        ax.set_xlim(rng.low, rng.high)
        ax.set_xlabel(name)
        ax.set_ylabel(f"{config.probe.score} (%)")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_summary_csv(rows: list[TrialRow], params: list[str], path: Path, score: str = SCORES[0]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "number", "tune_id", *params, score, "steps", "stopped_early", "state"])
        for i, r in enumerate(rows, 1):
            w.writerow([i, r.number, r.tune_id, *(r.params.get(p, "") for p in params),
                        "" if r.score is None else f"{r.score:.4f}", r.steps, r.stopped_early, r.state])
    return path


def write_report(report: SweepReport) -> str | None:
    """Print the summary table and write ``summary.csv``, ``best_config.yaml`` and the plots into the sweep
    directory (a local one; for a URI only the table is printed). Returns the best config's path, if any."""
    config, rows = report.config, report.rows
    params = list(config.search.ranges())
    done = sum(r.state in ("complete", "stopped early", "failed") for r in rows)
    status = "finished" if report.finished else \
        f"interrupted: {done} of {config.num_samples} trials done; run the same command again to resume"
    print(f"\n[sigma-ray] sweep {config.name} {status} ({config.sweep_dir}); full trial = {report.total_steps} "
          f"steps, score = {config.probe.score} (%)")
    print(format_table(rows, params, config.probe.score), flush=True)
    if is_uri(config.sweep_dir):
        return None
    out = Path(config.sweep_dir)
    write_summary_csv(rows, params, out / SUMMARY_CSV, config.probe.score)
    plot_history(rows, out / "optimization_history.png", config.probe.score)
    values, method = importances(report.study, rows, params)
    plot_importances(values, method, out / "param_importances.png")
    plot_params(rows, config, out / "params.png")
    best = write_best_config(report, out / BEST_CONFIG)
    print(f"[sigma-ray] best config: {best}\n[sigma-ray] plots, summary.csv and Tune's per-trial results in {out} "
          f"(tensorboard --logdir {out})" if best else f"[sigma-ray] no trial has a score yet; results in {out}",
          flush=True)
    return str(best) if best else None
