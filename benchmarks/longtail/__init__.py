"""Multi-seed accuracy benchmark of the long-tail classifier methods on the synthetic set.

Per training seed (cfg ``SEED``; the synthetic dataset itself is always generator seed 0), the
instance-balanced base model is trained once (softmax + repeat-factor sampling, and the sigmoid
base only when a selected method needs it), then every selected method fine-tunes its box
classifier in the decoupled regime from the matching base. Every run is a subprocess of
``tools/train_net.py``, evaluated once with LVIS AP on the preset's LVIS-protocol val set
(``ltdet_synthetic_val``; the headline); ``tools/evaluate.py`` then scores the same detections
against the hard-negative val json (``ltdet_synthetic_val_hardneg``; a stress test), so the two
protocols differ in their negative labels only (docs/SYNTHETIC_PROTOCOLS.md).

    python -m benchmarks.longtail [--seeds 0 1 2] [--methods softmax balms ...]
        [--out benchmarks/results/longtail] [--preset default|tiny] [--iters-scale 1.0]
        [--extra-opts KEY VALUE ...] [--data-root DIR] [--list] [--dry-run]

Caching: each run lives in ``OUT/runs/seed<S>/<name>-<hash>/``; the hash covers the contents of
the run's config and its ``_BASE_`` chain (also outside configs/synthetic), the method's own opts,
the preset, ``--iters-scale``, ``--extra-opts`` and, for a decoupled run, its base's hash. A run
is trained when its ``inference/ltdet_synthetic_val/lvis_metrics.json`` exists (``done.json``
records hash and duration); re-running the command only runs what is missing or failed, and
scores a trained run under a protocol it has no metrics for without re-training it. A
decoupled run is also re-run when its base model was re-trained since.
A failed run (non-zero exit) writes ``failed.json`` (return code, log tail) and is reported as
"failed"; the methods of a failed base are reported as "skipped". Methods of the paper list that
ltdet does not implement yet are reported as "not implemented" rows when requested.

Code: ``runs`` (methods, configs, cache, execution), ``report`` (results.md / .csv),
``plots`` (figures); this module runs them.

Outputs in OUT: ``results.md``, per protocol (the headline first): mean ± std over seeds of mask
AP, APr, APc, APf and box AP per method; the per-seed differences against the softmax re-training
baseline, for the methods from the sigmoid base against plain sigmoid, and for the variants
(sigmoid-family losses from the softmax base's classifier) against the same loss from the sigmoid
base, paired by seed; then the per-seed tables, the command line and the git commit.
``results.csv`` (one row per method x seed x protocol), ``groups.png`` (mask APr/APc/APf per
method with std error bars) and ``per_class.png`` (per-class mask AP against training image
count, mean over seeds), and their ``_hardneg`` siblings.

Preset "lv" (large vocabulary, 224 classes) trains the recipes of configs/synthetic_lv. Presets
other than "default" get ``MODEL.ROI_HEADS.NUM_CLASSES`` and the input size of the generated set
and their data under ``OUT/datasets/<preset>`` (``--data-root`` to change; the default preset
uses ``$DETECTRON2_DATASETS``, default ./datasets, like tools/demo.py).
A frequency group with no class (the tiny preset has no frequent class) has no AP: NaN from
ltdet's evaluator, -100 in metrics written before it mapped lvis-api's -1 to NaN; shown as n/a.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Optional, Sequence

from .plots import plot_groups, plot_per_class  # noqa: F401
from .report import paired_deltas, summarize, write_results  # noqa: F401
from .runs import (  # noqa: F401  (re-exported: the benchmark's interface)
    BASES,
    CACHED,
    DEFAULT_METHODS,
    FAILED,
    HEADLINE,
    KNOWN_METHODS,
    NOT_IMPLEMENTED,
    OK,
    PLANNED,
    PROTOCOL_TITLES,
    PROTOCOLS,
    ROOT,
    SKIPPED,
    Method,
    Run,
    Runner,
    Scorer,
    add_run_table_arguments,
    benchmark_data_root,
    benchmark_preset,
    benchmark_settings,
    cached,
    check_extra_opts,
    completed_run_dir,
    config_hash,
    default_data_root,
    default_out,
    execute,
    fmt_duration,
    plan,
    prepare_data,
    print_line,
    resolve_methods,
    scaled_schedule_opts,
    score_protocols,
    scoring_command,
    subprocess_runner,
    subprocess_scorer,
    synthetic_module,
    val_dataset,
    val_json,
)


def run_benchmark(
    methods: Sequence = DEFAULT_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    out: str = os.path.join(ROOT, "benchmarks", "results", "longtail"),
    preset: str = "default",
    extra_opts: Sequence[str] = (),
    runner: Optional[Runner] = None,
    iters_scale: float = 1.0,
    data_root: Optional[str] = None,
    command: Optional[str] = None,
    log=print_line,
    dry_run: bool = False,
    scorer: Optional[Scorer] = None,
) -> dict:
    """Plan, run (cache-aware) and report the benchmark. ``runner(run) -> return code`` is
    called for every run to execute (default: tools/train_net.py subprocess), ``scorer(run,
    protocol) -> return code`` to score its detections under the other protocols (default:
    tools/evaluate.py subprocess). Returns a dict
    with ``runs`` (Run objects: status ok | cached | failed | skipped | not implemented),
    ``summary`` (per method) and ``paths`` of the written outputs."""
    out = os.path.abspath(out)
    seeds = [int(s) for s in seeds]
    data_root, info = prepare_data(preset, out, data_root)
    log(
        f"synthetic set ({preset}): {info['num_classes']} classes, "
        f"{info['num_train_images']} train / {info['num_val_images']} val images in {data_root}"
    )
    runs = plan(
        methods,
        seeds,
        out,
        preset,
        extra_opts,
        iters_scale,
        data_root,
        num_classes=info["num_classes"] if preset != "default" else None,
    )
    settings = dict(
        preset=preset,
        seeds=" ".join(map(str, seeds)),
        iters_scale=iters_scale,
        extra_opts=" ".join(map(str, extra_opts)) or "none",
        data_root=data_root,
    )
    if command is None:
        command = (
            f"run_benchmark(methods={[getattr(m, 'name', m) for m in methods]}, seeds={seeds}, "
            f"out={out!r}, preset={preset!r}, extra_opts={list(extra_opts)}, "
            f"iters_scale={iters_scale})"
        )
    if dry_run:
        for r in runs:
            log(
                f"seed {r.seed} {r.name}: "
                + (
                    r.status
                    if r.status != PLANNED
                    else ("cached" if cached(r, repair=False) else "to run")
                    + "\n    "
                    + " ".join(map(shlex.quote, r.cmd))
                )
            )
        return dict(runs=runs, summary=summarize(runs), paths={})
    start = time.time()
    execute(
        runs,
        runner or subprocess_runner,
        log=log,
        scorer=scorer or subprocess_scorer,
        on_update=lambda: write_results(runs, out, command, settings, plots=False),
    )
    paths = write_results(runs, out, command, settings)
    counts = {
        s: sum(r.status == s for r in runs) for s in (OK, CACHED, FAILED, SKIPPED, NOT_IMPLEMENTED)
    }
    log(
        f"finished in {fmt_duration(time.time() - start)}: "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        + f"\nresults: {paths['md']}"
    )
    return dict(runs=runs, summary=summarize(runs), paths=paths)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.longtail",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (cfg SEED)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        metavar="METHOD",
        help="methods to compare (default: all known): " + ", ".join(KNOWN_METHODS),
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: benchmarks/results/longtail; with _<preset> "
        "for another preset and _custom with --iters-scale / --extra-opts, "
        "so a smoke run keeps off the table)",
    )
    parser.add_argument("--preset", default="default", help="synthetic preset: default | tiny | lv")
    parser.add_argument(
        "--iters-scale",
        type=float,
        default=1.0,
        help="multiply every config's MAX_ITER, STEPS and WARMUP_ITERS",
    )
    parser.add_argument(
        "--extra-opts",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        help="config overrides for every run (after the configs, before "
        "SEED/OUTPUT_DIR); MODEL.WEIGHTS here is the base models' start, "
        "decoupled runs always load their base's model_final.pth",
    )
    parser.add_argument("--data-root", default=None, help="DETECTRON2_DATASETS for the runs")
    parser.add_argument("--list", action="store_true", help="list the known methods and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and cache state only"
    )
    args = parser.parse_args(argv)
    if args.list:
        for m in list(BASES.values()) + list(KNOWN_METHODS.values()):
            where = m.config or "not implemented"
            print(f"{m.name:17s} {where:38s} {' '.join(m.opts):26s} {m.description}")
        return 0
    if args.preset not in synthetic_module().PRESETS:
        parser.error(
            f"unknown preset {args.preset!r}; choose from {sorted(synthetic_module().PRESETS)}"
        )
    try:
        resolve_methods(args.methods)
        check_extra_opts(args.extra_opts)
    except ValueError as e:
        parser.error(str(e))
    if args.out is None:
        args.out = default_out(args.preset, args.iters_scale, args.extra_opts)
    command = " ".join(
        ["-m benchmarks.longtail"]
        + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else list(argv))]
    )
    result = run_benchmark(
        args.methods,
        args.seeds,
        args.out,
        args.preset,
        args.extra_opts,
        iters_scale=args.iters_scale,
        data_root=args.data_root,
        command="python " + command,
        dry_run=args.dry_run,
    )
    if not args.dry_run:
        with open(result["paths"]["md"]) as f:
            print("\n" + f.read().split("\n## Per seed")[0])
    return 1 if any(r.status == FAILED for r in result["runs"]) else 0
