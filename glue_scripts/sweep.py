#!/usr/bin/env python
"""Run GLUE tasks × methods × seeds with run_glue.py, skip finished runs, and write the paper-style table and plot.

Each run is ``{runs_dir}/{task}/{method}/seed{seed}/`` (weights and log, not for git; emptied before
a run starts there) and counts as finished once run_glue.py exits with status 0 and its
``all_results.json`` holds the task's eval metrics (run_glue.py writes the train metrics there
first). A finished run's results are copied, with its settings (the identities of the base model
and of the task's data, the launcher and the run_glue.py arguments), to the record
``{results_dir}/glue_{name}/{task}/{method}/seed{seed}.json`` (small, kept in git): the table is
built from the records and a run with a record is skipped, so a sweep resumes where it stopped, on
this machine or on a fresh clone. A record made with other settings stops the sweep before it runs
anything (use another ``--name``, or delete the records to rerun them); a failed run is reported and
the sweep goes on. The report's text (``--note``) is kept in ``glue_{name}/note.md``. The table
(``results/glue_{name}.md`` and ``.csv``: mean ± sample std over seeds per task, the mean alone for
one seed, their average, trainable parameters outside the head) and the plot (average score vs
parameters, log x, SURM highlighted) are the shape of the paper's Table 5 and Figure 7 (right)::

    python glue_scripts/sweep.py --name minilm --model_name_or_path <dir> --glue_dir ../shared/data/glue \\
        --tasks rte mrpc stsb cola sst2 --methods full lora houlsby compacter surm-adapter-circulant \\
        --seeds 0 1 2 -- --num_train_epochs 3 --max_train_samples 2000
    python glue_scripts/sweep.py --name minilm --report_only --tasks ... --methods ...   # from the records

Arguments after ``--`` go to every run_glue.py call (after the defaults below, so they override them).
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import shutil
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


def model_identity(model_name_or_path: str) -> str:
    """A Hub id as it is; a local folder as its name and a digest of its config and weights (the same anywhere)."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        return model_name_or_path
    digest = hashlib.sha256()
    for path in [*folder.glob("config.json"), *sorted(folder.glob("*.safetensors")), *sorted(folder.glob("*.bin"))]:
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return f"local folder {'/'.join(folder.resolve().parts[-2:])}, sha256 {digest.hexdigest()[:16]}"


@functools.cache  # every record and run of a sweep asks; QQP's and MNLI's TSVs are hundreds of MB
def data_identity(glue_dir: str | None, task: str) -> str:
    """The Hub dataset's name; a local GLUE folder as a digest of the task's TSV files (the same anywhere)."""
    if glue_dir is None:
        return f"Hub dataset nyu-mll/glue {task}"
    folder = Path(glue_dir) / get_task(task).folder
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.tsv")):
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return f"local GLUE folder {get_task(task).folder}, sha256 {digest.hexdigest()[:16]}"


def settings(args: argparse.Namespace, task: str, method: str, extra: list[str]) -> dict:
    """What a run's result depends on besides the seed: the base model, the task's data, the launcher (processes
    and precision) and the run_glue.py arguments."""
    return {
        "model": args.model_identity, "data": data_identity(args.glue_dir, task), "launcher": args.launcher or "python",
        "arguments": [*DEFAULTS, *METHODS[method], *extra],
    }  # fmt: skip


def check_records(args: argparse.Namespace, extra: list[str]) -> None:
    """Stop before running anything if a record of this sweep was made with other settings."""
    stale = [
        path
        for task in args.tasks
        for method in args.methods
        for seed in args.seeds
        if (path := record_path(args.records_dir, task, method, seed)).is_file()
        and json.loads(path.read_text()).get("settings") != settings(args, task, method, extra)
    ]
    if stale:
        sys.exit(
            f"sweep.py: error: {len(stale)} record(s) of sweep {args.name!r} were made with another model, other "
            f"data, another launcher or other arguments ({stale[0]}, ...): pass another --name, or delete those "
            "records to rerun them"
        )


def run_all(args: argparse.Namespace, extra: list[str]) -> list[Path]:
    """Run what is not recorded yet; record each finished run. Returns the runs that failed."""
    failed = []
    for task in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                output = run_dir(args.runs_dir, task, method, seed)
                record = record_path(args.records_dir, task, method, seed)
                expected = settings(args, task, method, extra)
                if read_results(record, task) is not None:
                    print(f"done already: {record}", flush=True)
                    continue
                ran_with = output / "sweep_settings.json"  # a finished run with these settings is only recorded
                results = read_results(output / "all_results.json", task)
                if results is None or not (ran_with.is_file() and json.loads(ran_with.read_text()) == expected):
                    command = [
                        *(args.launcher or sys.executable).split(), str(RUN_GLUE),
                        "--model_name_or_path", args.model_name_or_path, "--task_name", task, "--seed", str(seed),
                        "--output_dir", str(output), "--overwrite_output_dir",
                        *(["--glue_dir", args.glue_dir] if args.glue_dir else []), *expected["arguments"],
                    ]  # fmt: skip
                    print("running:", " ".join(command), flush=True)
                    shutil.rmtree(output, ignore_errors=True)  # an interrupted or other run's files: none may remain
                    output.mkdir(parents=True)
                    with (output / "log.txt").open("w") as log:
                        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
                    results = read_results(output / "all_results.json", task) if completed.returncode == 0 else None
                    if results is None:
                        status = f"exit status {completed.returncode}"
                        print(f"failed: {output} ({status}, see its log.txt); going on", flush=True)
                        failed.append(output)
                        continue
                    ran_with.write_text(json.dumps(expected, indent=2) + "\n")
                record.parent.mkdir(parents=True, exist_ok=True)
                record.write_text(json.dumps(results | {"settings": expected}, indent=2, sort_keys=True) + "\n")
    return failed


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
                if (results := read_results(record_path(args.records_dir, task, method, seed), task)) is None:
                    continue
                row["scores"].setdefault(task, []).append(score(results, task))
                row["params"] = row["params"] or results["adapter_params"]
        if row["scores"]:
            table[method] = row
    return table


def write_report(table: dict[str, dict], tasks: list[str], name: str, results_dir: Path, note: str) -> None:
    """``glue_{name}.md`` (note and table: mean ± sample std over seeds), ``.csv`` (the same, 2 decimals, one
    number a cell), ``.png``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    header = ["method", "params", *tasks, "avg", "seeds"]
    md_rows, csv_rows = [], []
    for method, row in table.items():
        scores = row["scores"]
        means = {task: np.mean(s) for task, s in scores.items()}
        stds = {task: np.std(s, ddof=1) for task, s in scores.items() if len(s) > 1}  # sample std over seeds
        average = np.mean([means[task] for task in tasks]) if all(task in scores for task in tasks) else None
        seeds = "/".join(map(str, sorted({len(s) for s in scores.values()})))
        cells = [
            "–" if task not in scores else f"{means[task]:.1f}" + (f" ± {stds[task]:.1f}" if task in stds else "")
            for task in tasks
        ]
        md_rows.append([method, f"{row['params']:,}", *cells, "–" if average is None else f"{average:.1f}", seeds])
        numbers = [round(x[task], 2) if task in x else "" for task in tasks for x in (means, stds)]
        csv_rows.append([method, row["params"], *numbers, "" if average is None else round(average, 2), seeds])
    with (results_dir / f"glue_{name}.csv").open("w", newline="") as f:
        std_header = [column for task in tasks for column in (task, f"{task}_std")]
        csv.writer(f).writerows([["method", "params", *std_header, "avg", "seeds"], *csv_rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in md_rows]
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
    parser.add_argument("--model_name_or_path", help="Hub id or local folder; not needed with --report_only.")
    parser.add_argument("--glue_dir", default=None, help="Local GLUE folder (official TSVs); default: the Hub.")
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola", "sst2"], choices=GLUE_TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs_dir", type=Path, default=None, help="Default: outputs/glue_<name>.")
    parser.add_argument("--results_dir", type=Path, default=Path("results"), help="Table, plot and run records.")
    parser.add_argument(
        "--launcher", default=None, help='Default: this Python; e.g. "accelerate launch --config_file ..."'
    )
    parser.add_argument(
        "--note", default=None, help="The report's text: model, subsampling, epochs (kept for later runs)."
    )
    parser.add_argument("--report_only", action="store_true", help="Only write the table and plot.")
    args = parser.parse_args(argv)
    if not args.report_only and args.model_name_or_path is None:
        parser.error("--model_name_or_path is needed to run (only --report_only goes without it)")
    args.runs_dir = args.runs_dir or Path("outputs") / f"glue_{args.name}"
    args.records_dir = args.results_dir / f"glue_{args.name}"
    note_file = args.records_dir / "note.md"
    if args.note is not None:
        note_file.parent.mkdir(parents=True, exist_ok=True)
        note_file.write_text(args.note.strip() + "\n")
    failed = []
    if not args.report_only:
        args.model_identity = model_identity(args.model_name_or_path)
        check_records(args, extra)
        failed = run_all(args, extra)
    table = collect(args)
    note = note_file.read_text().strip() if note_file.is_file() else ""
    write_report(table, args.tasks, args.name, args.results_dir, note)
    print(f"wrote {args.results_dir}/glue_{args.name}.{{md,csv,png}}")
    if failed:
        sys.exit(f"sweep.py: {len(failed)} run(s) failed, see their log.txt: {', '.join(map(str, failed))}")


if __name__ == "__main__":
    main()
