#!/usr/bin/env python
"""Run GLUE tasks × methods × seeds with run_glue.py, skip finished runs, and write the paper-style table and plot.

Each run is ``{runs_dir}/{task}/{method}/seed{seed}/`` (weights and log, not for git) and counts as
finished once its ``all_results.json`` holds the task's eval metrics (run_glue.py writes the train
metrics there first). A finished run's results are copied to the record
``{results_dir}/glue_{name}/{task}/{method}/seed{seed}.json`` (small, kept in git): the table is
built from the records and a run with a record is skipped, so a sweep resumes where it stopped, on
this machine or on a fresh clone. The table
(``results/glue_{name}.md`` and ``.csv``: mean ± std over seeds per task, their average, trainable
parameters outside the head) and the plot (average score vs parameters, log x, SURM highlighted) are
the shape of the paper's Table 5 and Figure 7 (right)::

    python glue_scripts/sweep.py --name minilm --model_name_or_path <dir> --glue_dir ../shared/data/glue \\
        --tasks rte mrpc stsb cola sst2 --methods full lora houlsby compacter surm-adapter-circulant \\
        --seeds 0 1 2 -- --num_train_epochs 3 --max_train_samples 2000
    python glue_scripts/sweep.py --name minilm --report_only ...   # table and plot from finished runs

Arguments after ``--`` go to every run_glue.py call (after the defaults below, so they override them).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from surm_nlp.glue import GLUE_TASKS, get_task

RUN_GLUE = Path(__file__).with_name("run_glue.py")
METHODS: dict[str, list[str]] = {
    "full": ["--surm", "none", "--baseline", "full", "--learning_rate", "5e-5"],
    "bitfit": ["--surm", "none", "--baseline", "bitfit", "--learning_rate", "1e-3"],
    "lora": ["--surm", "none", "--baseline", "lora", "--learning_rate", "5e-4"],
    "houlsby": ["--surm", "none", "--baseline", "houlsby", "--learning_rate", "1e-3"],
    "pfeiffer": ["--surm", "none", "--baseline", "pfeiffer", "--learning_rate", "1e-3"],
    "compacter": ["--surm", "none", "--baseline", "compacter", "--learning_rate", "3e-3"],
    **{
        f"surm-adapter-{s}": ["--surm", s, "--surm_mode", "adapter", "--learning_rate", "3e-3"]
        for s in ("circulant", "toeplitz", "kronecker")
    },
    **{
        f"surm-lora-{s}": ["--surm", s, "--surm_mode", "lora", "--learning_rate", "3e-3"]
        for s in ("circulant", "toeplitz", "kronecker", "ldr")
    },
}
DEFAULTS = [
    "--do_train", "--do_eval", "--max_seq_length", "128", "--per_device_train_batch_size", "32",
    "--warmup_ratio", "0.06", "--lr_scheduler_type", "linear", "--weight_decay", "0.1",
    "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none", "--logging_steps", "20",
]  # fmt: skip


def run_dir(runs_dir: Path, task: str, method: str, seed: int) -> Path:
    return runs_dir / task / method / f"seed{seed}"


def record_path(records_dir: Path, task: str, method: str, seed: int) -> Path:
    return records_dir / task / method / f"seed{seed}.json"


def read_results(path: Path, task: str) -> dict | None:
    """The results in ``path`` if they hold the task's eval metrics, else None (not run or interrupted)."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    return results if all(key in results for key in get_task(task).eval_metric_keys) else None


def finished_results(args: argparse.Namespace, task: str, method: str, seed: int) -> dict | None:
    """The run's record; a run finished in the runs folder but not recorded yet is recorded first."""
    record = record_path(args.records_dir, task, method, seed)
    if (results := read_results(record, task)) is not None:
        return results
    results = read_results(run_dir(args.runs_dir, task, method, seed) / "all_results.json", task)
    if results is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def run_all(args: argparse.Namespace, extra: list[str]) -> None:
    for task in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                output = run_dir(args.runs_dir, task, method, seed)
                if finished_results(args, task, method, seed):
                    print(f"done already: {output}", flush=True)
                    continue
                command = [
                    *args.launcher.split(), str(RUN_GLUE), "--model_name_or_path", args.model_name_or_path,
                    "--task_name", task, "--seed", str(seed), "--output_dir", str(output), "--overwrite_output_dir",
                    *(["--glue_dir", args.glue_dir] if args.glue_dir else []), *DEFAULTS, *METHODS[method], *extra,
                ]  # fmt: skip
                print("running:", " ".join(command), flush=True)
                output.mkdir(parents=True, exist_ok=True)
                with (output / "log.txt").open("w") as log:
                    subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
                finished_results(args, task, method, seed)


def score(results: dict, task: str) -> float:
    """The task's score in points (mean of its metrics × 100, as on the GLUE leaderboard)."""
    return 100 * float(np.mean([results[key] for key in get_task(task).eval_metric_keys]))


def collect(args: argparse.Namespace) -> dict[str, dict]:
    """Per method: scores per task (list over finished seeds) and parameters outside the head."""
    table: dict[str, dict] = {}
    for method in args.methods:
        row = {"scores": {}, "params": None}
        for task in args.tasks:
            for seed in args.seeds:
                if (results := finished_results(args, task, method, seed)) is None:
                    continue
                row["scores"].setdefault(task, []).append(score(results, task))
                row["params"] = row["params"] or results["adapter_params"]
        if row["scores"]:
            table[method] = row
    return table


def write_report(table: dict[str, dict], tasks: list[str], name: str, results_dir: Path, note: str) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    header = ["method", "params", *tasks, "avg", "seeds"]
    rows = []
    for method, row in table.items():
        scores = row["scores"]
        complete = all(task in scores for task in tasks)
        average = f"{np.mean([np.mean(scores[task]) for task in tasks]):.1f}" if complete else "–"
        cells = [f"{np.mean(s):.1f} ± {np.std(s):.1f}" if (s := scores.get(task)) else "–" for task in tasks]
        seeds = sorted({len(s) for s in scores.values()})
        rows.append([method, f"{row['params']:,}", *cells, average, "/".join(map(str, seeds))])
    with (results_dir / f"glue_{name}.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    (results_dir / f"glue_{name}.md").write_text(f"# GLUE: {name}\n\n{note}\n\n" + "\n".join(lines) + "\n")
    plot(table, tasks, results_dir / f"glue_{name}.png")


def plot(table: dict[str, dict], tasks: list[str], path: Path) -> None:
    """Average score vs parameters, over the tasks that every method has finished (all, once the sweep is done)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [task for task in tasks if all(task in row["scores"] for row in table.values())]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, row in table.items():
        average = np.mean([np.mean(row["scores"][task]) for task in tasks]) if tasks else float("nan")
        surm = method.startswith("surm")
        ax.scatter(row["params"], average, s=60 if surm else 30, marker="*" if surm else "o", c="C3" if surm else "C0")
        ax.annotate(method, (row["params"], average), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trained parameters outside the task head")
    ax.set_ylabel(f"average score ({', '.join(tasks)})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="Names results/glue_<name>.{md,csv,png}.")
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--glue_dir", default=None, help="Local GLUE folder (official TSVs); default: the Hub.")
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola", "sst2"], choices=GLUE_TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs_dir", type=Path, default=None, help="Default: outputs/glue_<name>.")
    parser.add_argument("--results_dir", type=Path, default=Path("results"), help="Table, plot and run records.")
    parser.add_argument("--launcher", default=f"{sys.executable}", help='e.g. "accelerate launch --config_file ..."')
    parser.add_argument("--note", default="", help="A sentence for the report: model, subsampling, epochs.")
    parser.add_argument("--report_only", action="store_true", help="Only write the table and plot.")
    args = parser.parse_args(argv)
    args.runs_dir = args.runs_dir or Path("outputs") / f"glue_{args.name}"
    args.records_dir = args.results_dir / f"glue_{args.name}"
    if not args.report_only:
        run_all(args, extra)
    table = collect(args)
    write_report(table, args.tasks, args.name, args.results_dir, args.note)
    print(f"wrote {args.results_dir}/glue_{args.name}.{{md,csv,png}}")


if __name__ == "__main__":
    main()
