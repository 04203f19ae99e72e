"""`tether sweep` (this package: ``spec`` parses, ``run`` runs, ``report`` reports): methods x coefficient grids x seeds, run cell by cell (resumable), one report with scaling-law fits.

Spec (YAML; example in configs/sweeps/imdb.yaml)::

    name: imdb-sweep                 # letters, digits, '_', '.', '-' (default: the spec file's stem)
    base: default                    # preset name or YAML path (relative to the spec's folder, then the
                                     # working directory); its `variants` are ignored
    set: {train.iterations: 12}      # dotted overrides applied to every cell (optional)
    seeds: [0, 1]                    # train.seed per cell (optional; default: each cell's own train.seed)
    methods:                         # method name -> partial config, plus an optional grid
      ppo_kl:
        config: {kl: {mode: fixed}}
        grid: {kl.coef: [0.01, 0.05]}  # dotted field -> list of values; cartesian product
      elastic_reset:
        config: {kl: {mode: fixed, coef: 0.01}, elastic_reset: {enabled: true, every: 10}}

Cells = for each method: the product of its grid values x seeds. A cell's config is the base dict,
deep-merged with ``set``, the method's ``config``, the cell's grid values and ``train.seed``, then
validated with the one schema (learner.config), so every config field (``algorithm``, ``fdpg``, ...)
works here too. As for `variants`, a method that switches ``algorithm`` does not inherit the base's
sections of the other algorithms. Every cell is validated before anything runs.

Layout of a sweep folder (default ``<runs_dir>/sweep-<name>``; the same command resumes it)::

    cells.json                        resolved spec + every cell's id, folder and full config
    <method>/<setting>/seed-<s>/      one run folder per cell, setting e.g. 'kl.coef=0.05' or 'default'
        cell.yaml                     the cell's config; `python -m services.experiments.sweep run-cell <folder>` runs it
    report.html, *.png, sweep_summary.json

Re-running skips finished cells (status.json) and resumes cells with a checkpoint; a cell folder
that holds a run of a different config is refused rather than silently mixed. With ``submit``
(a Ray dashboard address) every unfinished cell is its own Ray job running ``run-cell``; the sweep
folder must then be on a filesystem the cluster's nodes share.
"""
from services.experiments.sweep.report import FINAL_KEYS, format_table, summarise, write_sweep_report
from services.experiments.sweep.run import SweepResult, auto_parallel, cell_entrypoint, run_cell, run_sweep
from services.state.runlog import run_state
from services.experiments.sweep.spec import Cell, Sweep, SweepSpecError, load_sweep, write_sweep_files

__all__ = ["Cell", "Sweep", "SweepResult", "SweepSpecError", "FINAL_KEYS", "auto_parallel", "cell_entrypoint", "run_state", "format_table",
           "load_sweep", "run_cell", "run_sweep", "summarise", "write_sweep_files", "write_sweep_report"]
