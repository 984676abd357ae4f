#!/usr/bin/env python
"""Multi-seed accuracy benchmark of the long-tail classifier methods on the synthetic set.

Per training seed (cfg ``SEED``; the synthetic dataset itself is always generator seed 0), the
instance-balanced base model is trained once (softmax + repeat-factor sampling, and the sigmoid
base only when a selected method needs it), then every selected method fine-tunes its box
classifier in the decoupled regime from the matching base. Every run is a subprocess of
``tools/train_net.py`` and is evaluated with LVIS AP on ``ltdet_synthetic_val``.

    python benchmarks/longtail.py [--seeds 0 1 2] [--methods softmax balms ...]
        [--out benchmarks/results/longtail] [--preset default|tiny] [--iters-scale 1.0]
        [--extra-opts KEY VALUE ...] [--data-root DIR] [--list] [--dry-run]

Caching: each run lives in ``OUT/runs/seed<S>/<name>-<hash>/``; the hash covers the contents of
the run's config and its ``_BASE_`` chain (also outside configs/synthetic), the method's own opts,
the preset, ``--iters-scale``, ``--extra-opts`` and, for a decoupled run, its base's hash. A run
is complete when its ``inference/ltdet_synthetic_val/lvis_metrics.json`` exists (``done.json``
records hash and duration); re-running the command only runs what is missing or failed. A
decoupled run is also re-run when its base model was re-trained since.
A failed run (non-zero exit) writes ``failed.json`` (return code, log tail) and is reported as
"failed"; the methods of a failed base are reported as "skipped". Methods of the paper list that
ltdet does not implement yet are reported as "not implemented" rows when requested.

Outputs in OUT: ``results.md`` (mean ± std over seeds of mask AP, APr, APc, APf and box AP per
method; the per-seed differences against the softmax re-training baseline, and for the methods
from the sigmoid base against plain sigmoid, paired by seed; the per-seed table, the command line
and the git commit), ``results.csv`` (one row
per method x seed), ``groups.png`` (mask APr/APc/APf per method with std error bars) and
``per_class.png`` (per-class mask AP against training image count, mean over seeds).

Presets other than "default" get ``MODEL.ROI_HEADS.NUM_CLASSES`` and the input size of the
generated set and their data under ``OUT/datasets/<preset>`` (``--data-root`` to change; the
default preset uses ``$DETECTRON2_DATASETS``, default ./datasets, like tools/demo.py).
A frequency group with no class (the tiny preset has no frequent class) has no AP: NaN from
ltdet's evaluator, -100 in metrics written before it mapped lvis-api's -1 to NaN; shown as n/a.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs", "synthetic")
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
VAL_DATASET = "ltdet_synthetic_val"
SYNTHETIC_DIR = "ltdet_synthetic"  # as ltdet.data.builtin.SYNTHETIC_DIR
DATA_SEED = 0  # the dataset is the same for every training seed

# (column label, task, metric) of the tables; mask AP = segm.
METRICS = [("mask AP", "segm", "AP"), ("APr", "segm", "APr"), ("APc", "segm", "APc"),
           ("APf", "segm", "APf"), ("box AP", "bbox", "AP")]
CSV_METRICS = ["segm_AP", "segm_APr", "segm_APc", "segm_APf", "bbox_AP"]

OK, CACHED, FAILED, SKIPPED, NOT_IMPLEMENTED, PLANNED = (
    "ok", "cached", "failed", "skipped", "not implemented", "planned")


@dataclass(frozen=True)
class Method:
    """A benchmark entry: ``config`` relative to configs/synthetic, trained from base ``base``
    ("softmax" | "sigmoid"; None for a base model itself), with extra cfg ``opts``."""
    name: str
    config: Optional[str]
    base: Optional[str] = None
    opts: tuple = ()
    implemented: bool = True
    description: str = ""


BASES = {
    "softmax": Method("base_softmax_rfs", "base_softmax_rfs.yaml",
                      description="instance-balanced base: softmax + repeat-factor sampling"),
    "sigmoid": Method("base_sigmoid_rfs", "base_sigmoid_rfs.yaml",
                      description="instance-balanced base: sigmoid + repeat-factor sampling"),
}

# The methods of the paper list, in table order. Unimplemented ones have no config.
KNOWN_METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("softmax", "decoupled/softmax.yaml", "softmax", description="re-training baseline"),
    Method("balanced_softmax", "decoupled/balanced_softmax.yaml", "softmax",
           description="Balanced Softmax (BALMS A.1 Eq. 10)"),
    Method("balms", "decoupled/balms.yaml", "softmax",
           description="Balanced Softmax + Meta Reweigher"),
    Method("sigmoid", "decoupled/sigmoid.yaml", "sigmoid",
           description="K binary classifiers"),
    Method("balanced_sigmoid", "decoupled/balanced_sigmoid.yaml", "sigmoid",
           description="sigmoid with the balanced prior (BALMS A.2 Eq. 23)"),
    Method("balms_sigmoid", "decoupled/balms_sigmoid.yaml", "sigmoid",
           description="balanced sigmoid + Meta Reweigher"),
    Method("eql", "decoupled/eql.yaml", "sigmoid",
           description="Equalization Loss (Tan et al. 2020), lambda scaled to this set"),
    Method("federated", "decoupled/federated.yaml", "sigmoid",
           description="federated loss (Zhou et al. 2021), class count scaled to this set"),
    Method("two_component", "decoupled/two_component.yaml", "softmax",
           description="two-component meta weights (Jamal et al. 2020)"),
    Method("dbm_bs", "decoupled/dbm_bs.yaml", "softmax",
           description="difficulty-aware balancing margins + Balanced Softmax (Son et al. 2025)"),
    Method("m2m", "decoupled/m2m.yaml", "softmax",
           description="softmax + major-to-minor feature translation (Kim et al. 2020)"),
]}
DEFAULT_METHODS = list(KNOWN_METHODS)


# ----------------------------------------------------------------------------- runs and cache

@dataclass
class Run:
    """One training run (a base model or a decoupled method) for one seed."""
    method: Method
    seed: int
    hash: str = ""
    out_dir: str = ""
    opts: List[str] = field(default_factory=list)
    cmd: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    base_run: Optional["Run"] = None
    status: str = PLANNED
    reason: str = ""
    returncode: Optional[int] = None
    duration_s: Optional[float] = None
    run_id: str = ""  # identifies a completed training (dependents record their base's)
    metrics: Optional[dict] = None

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def is_base(self) -> bool:
        return self.method.base is None and self.method.implemented

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.out_dir, "inference", VAL_DATASET, "lvis_metrics.json")

    @property
    def per_class_path(self) -> str:
        return os.path.join(self.out_dir, "inference", VAL_DATASET, "per_class_ap.csv")

    def summary(self) -> dict:
        return dict(method=self.name, seed=self.seed, status=self.status, reason=self.reason,
                    returncode=self.returncode, duration_s=self.duration_s, hash=self.hash,
                    out_dir=self.out_dir, metrics=self.metrics)


Runner = Callable[[Run], int]


def subprocess_runner(run: Run) -> int:
    """Default runner: tools/train_net.py in a subprocess, stdout+stderr into ``run.log_path``."""
    with open(run.log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in run.cmd) + "\n")
        log.flush()
        return subprocess.run(run.cmd, env=run.env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT).returncode


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _config_chain(path: str) -> List[str]:
    """The config file and its _BASE_ files, most derived first."""
    import yaml

    chain, seen = [], set()
    while path and path not in seen:
        seen.add(path)
        chain.append(path)
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        base = data.get("_BASE_")
        path = os.path.normpath(os.path.join(os.path.dirname(path), base)) if base else None
    return chain


def _resolved_yaml(path: str) -> dict:
    """The merged plain-yaml content of a config and its _BASE_ chain (no detectron2 import)."""
    import yaml

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v
    merged: dict = {}
    for p in reversed(_config_chain(path)):
        with open(p) as f:
            data = yaml.safe_load(f) or {}
        data.pop("_BASE_", None)
        merge(merged, data)
    return merged


def scaled_schedule_opts(config: str, scale: float) -> List[str]:
    """SOLVER.MAX_ITER / STEPS / WARMUP_ITERS of ``config`` multiplied by ``scale``."""
    if scale == 1.0:
        return []
    solver = _resolved_yaml(config).get("SOLVER", {})
    max_iter = solver.get("MAX_ITER", 40000)  # detectron2 defaults when no file sets them
    steps = solver.get("STEPS", (30000,))
    if isinstance(steps, str):
        import ast
        steps = ast.literal_eval(steps)
    warmup = solver.get("WARMUP_ITERS", 1000)
    it = lambda x: max(1, int(round(x * scale)))  # noqa: E731
    # fvcore's MultiStepParamScheduler wants strictly increasing steps below MAX_ITER: rounding
    # can merge steps or reach MAX_ITER, so drop those (a drop at the last iteration is moot).
    kept = sorted({it(s) for s in steps if it(s) < it(max_iter)})
    return ["SOLVER.MAX_ITER", str(it(max_iter)),
            "SOLVER.STEPS", "(" + "".join(f"{s}," for s in kept) + ")",
            "SOLVER.WARMUP_ITERS", str(int(round(warmup * scale)))]


def _file_digest(paths: Sequence[str]) -> List[List[str]]:
    out = []
    for p in sorted(set(paths)):
        with open(p, "rb") as f:
            out.append([os.path.relpath(p, ROOT), hashlib.sha256(f.read()).hexdigest()])
    return out


def config_hash(method: Method, opts: Sequence[str], preset: str, base_hash: str = "") -> str:
    """Hash of everything that defines a run except its seed (the seed is in its directory)."""
    # Only the run's own _BASE_ chain: adding a recipe must not invalidate the other runs.
    config = os.path.join(CONFIG_DIR, method.config)
    payload = dict(files=_file_digest(_config_chain(config)),
                   config=method.config, opts=[str(o) for o in opts], preset=preset,
                   data_seed=DATA_SEED, generator_version=_synthetic().VERSION, base=base_hash)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _synthetic():
    """ltdet.data.synthetic loaded from its file: importing the ltdet package would import
    detectron2 (seconds) in the orchestrating process, which never needs it."""
    mod = sys.modules.get("ltdet.data.synthetic") or sys.modules.get("_ltdet_synthetic")
    if mod is None:
        spec = importlib.util.spec_from_file_location(
            "_ltdet_synthetic", os.path.join(ROOT, "ltdet", "data", "synthetic.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_ltdet_synthetic"] = mod
        spec.loader.exec_module(mod)
    return mod


def default_out(preset: str = "default", iters_scale: float = 1.0,
                extra_opts: Sequence[str] = ()) -> str:
    """Where the table and runs go unless --out says otherwise: the committed folder only for
    the benchmark's own settings, so a smoke or variant run never replaces its table."""
    name = "longtail" if preset == "default" else f"longtail_{preset}"
    if iters_scale != 1.0 or extra_opts:
        name += "_custom"
    # From the repository root, not the working directory: the cache and the diagnostics
    # (inference_shift.py, false_positives.py) must find the same folder wherever this runs.
    return os.path.join(ROOT, "benchmarks", "results", name)


def completed_run_dir(out: str, method: str, seed: int) -> str:
    """The run folder of ``method`` / ``seed`` in the latest table written to ``out`` (its
    results.csv), for the diagnostics that re-read a run's model or detections: exactly the run
    the table reports, never a stale, failed or other-preset run lying in the same folder."""
    table = os.path.join(out, "results.csv")
    if not os.path.isfile(table):
        raise FileNotFoundError(f"no benchmark table {table}; run benchmarks/longtail.py first "
                                "(or pass its --out)")
    with open(table, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == method and r["seed"] == str(seed)]
    if not rows:
        raise FileNotFoundError(
            f"{table} has no run of {method} seed {seed}; re-run benchmarks/longtail.py with "
            f"every method and seed the table should hold, {method} seed {seed} included (cached "
            "runs are reused; the table lists only the runs of its last invocation)")
    if rows[0]["status"] not in (OK, CACHED):
        raise FileNotFoundError(f"{method} seed {seed} did not complete in {table} (status "
                                f"{rows[0]['status']}: {rows[0]['reason']}); re-run benchmarks/longtail.py")
    return os.path.join(os.path.dirname(os.path.abspath(table)), rows[0]["run_dir"])


def cached(run: Run, repair: bool = True) -> bool:
    """Complete with the same hash (and, for a decoupled run, the same base training).
    ``repair``: write the missing done.json of a run stopped right after its evaluation."""
    if not os.path.isfile(run.metrics_path) or os.path.exists(os.path.join(run.out_dir, "failed.json")):
        return False
    if _read_json(run.metrics_path) is None:  # truncated or broken: run it again
        return False
    done = _read_json(os.path.join(run.out_dir, "done.json"))
    if done is None:  # metrics written but the process was stopped before done.json
        if not repair:
            return False
        done = dict(hash=run.hash, run_id=uuid.uuid4().hex, duration_s=None,
                    base_run_id=run.base_run.run_id if run.base_run else None)
        _write_json(os.path.join(run.out_dir, "done.json"), done)
    if done.get("hash") != run.hash:
        return False
    if run.base_run is not None and done.get("base_run_id") != run.base_run.run_id:
        return False
    run.run_id, run.duration_s = done["run_id"], done.get("duration_s")
    return True


# ----------------------------------------------------------------------------- planning

def resolve_methods(methods: Sequence) -> List[Method]:
    out = []
    for m in methods:
        if isinstance(m, Method):
            out.append(m)
        elif m in KNOWN_METHODS:
            out.append(KNOWN_METHODS[m])
        else:
            raise ValueError(f"unknown method {m!r}; known: {', '.join(KNOWN_METHODS)}")
    names = [m.name for m in out]
    dup = {n for n in names if names.count(n) > 1} | (set(names) & {b.name for b in BASES.values()})
    if dup:
        raise ValueError(f"duplicate or reserved method names: {sorted(dup)}")
    return out


def _check_extra_opts(extra_opts: Sequence[str]) -> List[str]:
    extra = [str(o) for o in extra_opts]
    if len(extra) % 2:
        raise ValueError(f"--extra-opts needs KEY VALUE pairs, got {len(extra)} items: {extra}")
    owned = {"SEED", "OUTPUT_DIR"} & set(extra[0::2])
    if owned:
        raise ValueError(f"{sorted(owned)} are set by the benchmark per run; not allowed in extra opts")
    return extra


def plan(methods: Sequence, seeds: Sequence[int], out: str, preset: str = "default",
         extra_opts: Sequence[str] = (), iters_scale: float = 1.0, data_root: Optional[str] = None,
         num_classes: Optional[int] = None) -> List[Run]:
    """Every run in execution order (per seed: bases, then methods), with commands and hashes.
    Unimplemented methods are included as runs with status "not implemented"."""
    methods = resolve_methods(methods)
    extra = _check_extra_opts(extra_opts)
    out = os.path.abspath(out)
    preset_opts = []
    if num_classes is not None:
        preset_opts += ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)]
    if preset != "default":
        size = str(_synthetic().PRESETS[preset]["image_size"])
        preset_opts += ["INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", size,
                        "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size]
    env = dict(os.environ)
    if data_root:
        env["DETECTRON2_DATASETS"] = data_root
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])

    bases_needed = ["softmax"] + (["sigmoid"] if any(m.implemented and m.base == "sigmoid"
                                                     for m in methods) else [])
    runs: List[Run] = []

    def make(method: Method, seed: int, base: Optional[Run]) -> Run:
        run = Run(method=method, seed=seed, base_run=base)
        if not method.implemented:
            run.status, run.reason = NOT_IMPLEMENTED, method.description
            return run
        config = os.path.join(CONFIG_DIR, method.config)
        run.opts = [str(o) for o in method.opts] + preset_opts + \
            scaled_schedule_opts(config, iters_scale) + extra
        run.hash = config_hash(method, run.opts, preset, base.hash if base else "")
        run.out_dir = os.path.join(out, "runs", f"seed{seed}", f"{method.name}-{run.hash}")
        run.log_path = os.path.join(run.out_dir, "train_net.log")
        tail = ["SEED", str(seed), "OUTPUT_DIR", run.out_dir]
        if base is not None:
            tail += ["MODEL.WEIGHTS", os.path.join(base.out_dir, "model_final.pth")]
        run.cmd = [sys.executable, TRAIN_NET, "--config-file", config] + run.opts + tail
        run.env = env
        return run

    for seed in seeds:
        base_runs = {}
        for key in bases_needed:
            base_runs[key] = make(BASES[key], seed, None)
            runs.append(base_runs[key])
        for m in methods:
            runs.append(make(m, seed, base_runs.get(m.base)))
    return runs


# ----------------------------------------------------------------------------- execution

def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _estimate(remaining: List[Run], fresh: List[Run], cached_runs: List[Run]) -> Optional[float]:
    """Seconds left. Each run takes the mean duration of the closest finished runs: the same
    method, else the same kind (base / decoupled), else any; within each, the runs finished in
    this invocation (this machine, now) before the cached ones. A base model takes ~6x as long
    as a fine-tune, so kinds must not mix while both are known."""
    def mean(rs):
        d = [r.duration_s for r in rs if r.duration_s]
        return sum(d) / len(d) if d else None
    total = 0.0
    for r in remaining:
        for same in (lambda x: x.name == r.name, lambda x: x.is_base == r.is_base, lambda x: True):
            est = mean([x for x in fresh if same(x)]) or mean([x for x in cached_runs if same(x)])
            if est:
                break
        if not est:
            return None
        total += est
    return total


def _print(msg: str) -> None:
    print(msg, flush=True)


def execute(runs: List[Run], runner: Runner = subprocess_runner, log=_print,
            on_update: Optional[Callable[[], None]] = None) -> List[Run]:
    """Run (or take from the cache) every planned run, in order; never raises for a failed run."""
    todo = [r for r in runs if r.status == PLANNED]
    fresh: List[Run] = []
    cached_runs: List[Run] = []
    for i, run in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] seed {run.seed} {run.name}"
        base = run.base_run
        if base is not None and base.status not in (OK, CACHED):
            run.status, run.reason = SKIPPED, f"base {base.name} {base.status}"
            log(f"{tag}: skipped ({run.reason})")
            continue
        if cached(run):
            run.status = CACHED
            run.metrics = _read_json(run.metrics_path)
            cached_runs.append(run)
            log(f"{tag}: cached ({run.out_dir})")
            continue
        # Runs still to train; complete ones further on are skipped and lend their durations
        # (checked in order, so a cached base is resolved before its methods).
        ahead = [r for r in todo[i:] if r.status == PLANNED]
        done_ahead = [r for r in ahead if cached(r, repair=False)]
        left = [r for r in ahead if r not in done_ahead]
        eta = _estimate([run] + left, fresh, cached_runs + done_ahead)
        n_left = 1 + len(left)
        eta_text = f"; about {_fmt_duration(eta)} left for {n_left} run{'s' * (n_left > 1)}" if eta else ""
        log(f"{tag} ... ({run.method.config}{eta_text})")

        if os.path.isdir(run.out_dir):  # a failed or interrupted earlier attempt
            shutil.rmtree(run.out_dir)
        os.makedirs(run.out_dir)
        start = time.time()
        try:
            rc = runner(run)
        except Exception as e:  # a runner bug must not lose the other runs
            rc = -1
            with open(run.log_path, "a") as f:
                f.write(f"\nrunner raised {type(e).__name__}: {e}\n")
        run.duration_s = time.time() - start
        run.returncode = rc
        metrics = _read_json(run.metrics_path) if rc == 0 else None
        if metrics is not None:
            run.status, run.run_id, run.metrics = OK, uuid.uuid4().hex, metrics
            _write_json(os.path.join(run.out_dir, "done.json"), dict(
                hash=run.hash, run_id=run.run_id, duration_s=run.duration_s, seed=run.seed,
                method=run.name, cmd=run.cmd,
                base_run_id=base.run_id if base else None,
                git_commit=_git_commit(ignore=os.path.join(run.out_dir, "..", "..", "..")),
                finished=datetime.now(timezone.utc).isoformat(timespec="seconds")))
            fresh.append(run)
            log(f"{tag}: done in {_fmt_duration(run.duration_s)}")
        else:
            run.status = FAILED
            run.reason = (f"exit code {rc}" if rc != 0 else "exit code 0 but lvis_metrics.json "
                          + ("unreadable" if os.path.isfile(run.metrics_path) else "missing"))
            tail = _tail(run.log_path)
            _write_json(os.path.join(run.out_dir, "failed.json"), dict(
                hash=run.hash, returncode=rc, reason=run.reason, duration_s=run.duration_s,
                seed=run.seed, method=run.name, cmd=run.cmd, log=run.log_path, log_tail=tail))
            last = [ln for ln in tail.strip().splitlines() if ln.strip()][-1:] or [""]
            log(f"{tag}: FAILED ({run.reason}) after {_fmt_duration(run.duration_s)}: "
                f"{last[0][:200]}\n    log: {run.log_path}")
        if on_update is not None:
            on_update()
    return runs


# ----------------------------------------------------------------------------- results

def _metric(metrics: Optional[dict], task: str, key: str) -> float:
    """A metric in percent; NaN when absent, NaN or -100 (no class in that group; older
    metrics files carry lvis-api's -1 scaled to -100)."""
    try:
        v = float(metrics[task][key])
    except (TypeError, KeyError, ValueError):
        return math.nan
    return math.nan if v <= -100 or not math.isfinite(v) else v


def _mean_std(values: List[float]):
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return mean, std


def _ok(run: Run) -> bool:
    return run.status in (OK, CACHED) and run.metrics is not None


def summarize(runs: List[Run]) -> List[dict]:
    """Per method (in run order): status, seeds with results, and (mean, std) per metric."""
    by_method: Dict[str, List[Run]] = {}
    for r in runs:
        by_method.setdefault(r.name, []).append(r)
    rows = []
    for name, rs in by_method.items():
        good = [r for r in rs if _ok(r)]
        stats = {label: _mean_std([_metric(r.metrics, t, k) for r in good]) for label, t, k in METRICS}
        bad = [r for r in rs if not _ok(r)]
        if not rs[0].method.implemented:
            status = NOT_IMPLEMENTED
        elif not good:
            status = "; ".join(sorted({f"{r.status} ({r.reason})" if r.reason else r.status for r in bad}))
        elif bad:
            status = f"{len(good)}/{len(rs)} seeds ok; " + ", ".join(
                f"seed {r.seed} {r.status}" for r in bad)
        else:
            status = "ok"
        rows.append(dict(method=name, runs=rs, good=good, stats=stats, status=status))
    return rows


BASELINE = "softmax"  # item 4 of the benchmark issue: the softmax re-training baseline
AP_LOSS_ALLOWED = 1.0  # ... and a method may give up at most this much mask AP


def paired_deltas(runs: List[Run], baseline: str = BASELINE) -> List[dict]:
    """Per decoupled method: (mean, std) over seeds of (method - baseline) for every metric,
    paired by seed. Every method of a seed starts from that seed's base model(s), so the seed's
    luck cancels in the difference and its spread is smaller than the table's."""
    ref = {r.seed: r for r in runs if r.name == baseline and _ok(r)}
    rows = []
    for name in dict.fromkeys(r.name for r in runs):
        pairs = [(r, ref[r.seed]) for r in runs
                 if r.name == name and _ok(r) and r.seed in ref and not r.is_base]
        if name == baseline or not pairs:
            continue
        stats = {label: _mean_std([_metric(r.metrics, t, k) - _metric(b.metrics, t, k) for r, b in pairs])
                 for label, t, k in METRICS}
        apr_up = sum(_metric(r.metrics, "segm", "APr") > _metric(b.metrics, "segm", "APr") for r, b in pairs)
        d_ap, d_apr = stats["mask AP"][0], stats["APr"][0]
        # Judged on the values the table shows (0.1): a +0.04 APr tie is not an improvement.
        holds = math.isfinite(d_apr) and round(d_apr, 1) > 0 and round(d_ap, 1) >= -AP_LOSS_ALLOWED
        rows.append(dict(method=name, base=pairs[0][0].method.base, stats=stats, seeds=len(pairs),
                         apr_up=apr_up, holds=holds))
    return rows


def _delta_table(runs: List[Run], baseline: str, labels: List[str], text: str,
                 base: Optional[str] = None) -> List[str]:
    """Markdown section of ``paired_deltas`` against ``baseline`` (only methods from ``base``)."""
    deltas = [d for d in paired_deltas(runs, baseline) if base is None or d["base"] == base]
    if not deltas:
        return []
    lines = ["", f"## Against the {baseline} re-training baseline, paired by seed", "", text, "",
             "| method | " + " | ".join(f"Δ {label}" for label in labels)
             + f" | APr up in | APr up, AP ≥ -{AP_LOSS_ALLOWED:g} |",
             "|---|" + "---:|" * len(labels) + "---:|---|"]
    for d in deltas:
        lines.append(f"| {d['method']} | " + " | ".join(_cell(*d["stats"][label], signed=True) for label in labels)
                     + f" | {d['apr_up']}/{d['seeds']} seeds | {'yes' if d['holds'] else 'no'} |")
    return lines


def _cell(mean: float, std: float, signed: bool = False) -> str:
    if not math.isfinite(mean):
        return "n/a"
    m = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return f"{m} ± {std:.1f}" if math.isfinite(std) else m


def _git_commit(ignore: Optional[str] = None) -> str:
    """HEAD, marked when tracked files differ from it. ``ignore``: the benchmark's output folder,
    whose tracked results files this tool rewrites after every run (they say nothing of the code)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=20)
        if head.returncode != 0:
            return "unknown (git rev-parse failed)"
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        if ignore:
            rel = os.path.relpath(os.path.abspath(ignore), ROOT)
            if rel != "." and not rel.startswith(".."):
                status += ["--", ".", f":(exclude){rel}"]
        dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True, timeout=20)
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def _run_commits(runs: List[Run]) -> Dict[str, int]:
    commits: Dict[str, int] = {}
    for r in runs:
        if _ok(r):
            c = (_read_json(os.path.join(r.out_dir, "done.json")) or {}).get("git_commit", "unknown")
            commits[c] = commits.get(c, 0) + 1
    return commits


def write_results(runs: List[Run], out: str, command: str, settings: dict,
                  plots: bool = True) -> Dict[str, str]:
    os.makedirs(out, exist_ok=True)
    rows = summarize(runs)
    seeds = sorted({r.seed for r in runs})
    paths = dict(md=os.path.join(out, "results.md"), csv=os.path.join(out, "results.csv"),
                 groups=os.path.join(out, "groups.png"), per_class=os.path.join(out, "per_class.png"))

    with open(paths["csv"] + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "status", *CSV_METRICS, "reason", "duration_s", "hash", "run_dir"])
        for r in runs:
            vals = [_metric(r.metrics, t, k) for _, t, k in METRICS]
            w.writerow([r.name, r.seed, r.status, *("" if math.isnan(v) else f"{v:.4f}" for v in vals),
                        r.reason, f"{r.duration_s:.1f}" if r.duration_s else "", r.hash,
                        os.path.relpath(r.out_dir, out) if r.out_dir else ""])
    os.replace(paths["csv"] + ".tmp", paths["csv"])

    labels = [label for label, _, _ in METRICS]
    lines = ["# Long-tail benchmark: decoupled classifier methods on the synthetic set", "",
             f"LVIS AP (%) on `{VAL_DATASET}`, mean ± std (sample std) over training seeds "
             f"{', '.join(map(str, seeds))}; the dataset is the same for every seed (generator seed "
             f"{DATA_SEED}, preset `{settings.get('preset')}`). n/a: no value (a frequency "
             "group without classes).", "",
             "| method | " + " | ".join(labels) + " | seeds | status |",
             "|---|" + "---:|" * len(labels) + "---:|---|"]
    for row in rows:
        if row["good"]:
            cells = [_cell(*row["stats"][label]) for label in labels]
            # A metric some seeds lack is averaged over the others: say over how many.
            for i, (_, t, k) in enumerate(METRICS):
                n = sum(math.isfinite(_metric(r.metrics, t, k)) for r in row["good"])
                if 0 < n < len(row["good"]):
                    cells[i] += f" ({n} seed{'s' * (n > 1)})"
        else:
            cells = ["—"] * len(labels)
        lines.append(f"| {row['method']} | " + " | ".join(cells)
                     + f" | {len(row['good'])}/{len(row['runs'])} | {row['status']} |")
    lines += _delta_table(runs, BASELINE, labels,
                          f"Per seed, method minus `{BASELINE}`; mean ± std over the seeds where both "
                          f"ran. Expected ordering: APr up, mask AP down by at most {AP_LOSS_ALLOWED:g} "
                          "(means). Methods from the sigmoid base share less of the seed's luck "
                          "with the baseline, so their spread stays wider.")
    lines += _delta_table(runs, "sigmoid", labels,
                          "The methods trained from the sigmoid base against plain sigmoid re-training "
                          "from the same base: the effect of the loss alone.", base="sigmoid")
    lines += ["", "## Per seed", "", "| method | seed | " + " | ".join(labels) + " | status |",
              "|---|---:|" + "---:|" * len(labels) + "---|"]
    for r in sorted(runs, key=lambda r: (list(dict.fromkeys(x.name for x in runs)).index(r.name), r.seed)):
        if _ok(r):
            vals = [_metric(r.metrics, t, k) for _, t, k in METRICS]
            cells = ["n/a" if math.isnan(v) else f"{v:.1f}" for v in vals]
        else:
            cells = ["—"] * len(labels)
        status = r.status + (f": {r.reason}" if r.reason else "")
        lines.append(f"| {r.name} | {r.seed} | " + " | ".join(cells) + f" | {status} |")
    lines += ["", "## Methods", "", "| method | config | base | extra opts | description |",
              "|---|---|---|---|---|"]
    seen = set()
    for r in runs:
        if r.name in seen:
            continue
        seen.add(r.name)
        m = r.method
        base = BASES[m.base].name if m.base in BASES else ("—" if m.implemented else "")
        lines.append(f"| {m.name} | {'`' + m.config + '`' if m.config else 'not implemented'} | "
                     f"{base} | {' '.join(map(str, m.opts))} | {m.description} |")
    lines += ["", "## Reproduce", "", "```", command, "```", "",
              f"* git commit: {_git_commit(ignore=out)}",
              "* commits the runs were trained at: " + (", ".join(
                  f"{c} ({n} run{'s' * (n > 1)})" for c, n in _run_commits(runs).items()) or "none"),
              "* settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
              f"* written: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
              "* runs: `runs/seed<S>/<method>-<config hash>/` (train_net.log, done.json or failed.json)",
              ""]
    failed = [r for r in runs if r.status == FAILED]
    if failed:
        lines += ["## Failed runs", ""]
        for r in failed:
            lines += [f"* seed {r.seed} {r.name}: {r.reason}; log `{os.path.relpath(r.log_path, out)}`"]
        lines.append("")
    with open(paths["md"] + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(paths["md"] + ".tmp", paths["md"])
    if plots:
        plot_groups(rows, paths["groups"])
        plot_per_class(rows, paths["per_class"])
    return paths


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_groups(rows: List[dict], path: str) -> None:
    plt = _plt()
    rows = [r for r in rows if r["good"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    groups = [("APr", "rare", "#d62728"), ("APc", "common", "#ff7f0e"), ("APf", "frequent", "#1f77b4")]
    width = 0.26
    for j, (key, label, color) in enumerate(groups):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        means = [r["stats"][key][0] for r in rows]
        stds = [r["stats"][key][1] for r in rows]
        ax.bar(xs, [m if math.isfinite(m) else 0 for m in means], width, color=color,
               label=f"{key} ({label})",
               yerr=[s if math.isfinite(s) else 0 for s in stds], capsize=3, ecolor="black")
        for x, m in zip(xs, means):
            if not math.isfinite(m):
                ax.text(x, 0.2, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['method']}\n(n={len(r['good'])})" for r in rows], rotation=30, ha="right",
                       fontsize=8)
    ax.set_ylabel("mask AP (%)")
    ax.set_title("Mask AP per frequency group (mean ± std over seeds)")
    if not rows:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _per_class_mean(runs: List[Run]) -> Dict[int, tuple]:
    """class id -> (training image count, mean mask AP over the runs, name)."""
    acc: Dict[int, list] = {}
    for r in runs:
        try:
            with open(r.per_class_path) as f:
                for row in csv.DictReader(f):
                    try:
                        ap = float(row["AP_segm"])
                    except (KeyError, ValueError):
                        continue
                    if not math.isfinite(ap) or ap < 0:
                        continue
                    entry = acc.setdefault(int(row["class_id"]),
                                           [int(float(row["train_image_count"])), [], row.get("name", "")])
                    entry[1].append(ap)
        except OSError:
            continue
    return {c: (n, sum(aps) / len(aps), name) for c, (n, aps, name) in acc.items() if aps}


GROUP_EDGES = (10.5, 100.5)  # LVIS groups: rare <= 10 training images, common <= 100


def _within_group(count: float, x: float) -> float:
    """``x`` clipped to the frequency group of a class with ``count`` training images."""
    lo = max([0.0] + [e for e in GROUP_EDGES if e < count])
    hi = min([math.inf] + [e for e in GROUP_EDGES if e > count])
    return min(max(x, lo * 1.005), hi / 1.005)


def plot_per_class(rows: List[dict], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    markers = "osD^vP*Xh<>p"
    rows = [r for r in rows if r["good"]]
    n = len(rows)
    for i, row in enumerate(rows):
        pts = _per_class_mean(row["good"])
        if not pts:
            continue
        # Methods side by side within +-3%, and never across an LVIS group line (a 10-image rare
        # class dodged to 10.6 would read as common).
        dodge = 1.0 + 0.06 * (i / (n - 1) - 0.5 if n > 1 else 0.0)
        xs = [_within_group(v[0], v[0] * dodge) for v in pts.values()]
        ax.scatter(xs, [v[1] for v in pts.values()], marker=markers[i % len(markers)],
                   color=plt.cm.tab10(i % 10), s=28, alpha=0.85,
                   label=f"{row['method']} (n={len(row['good'])})")
    ax.set_xscale("log")
    for edge in GROUP_EDGES:
        ax.axvline(edge, color="grey", lw=0.8, ls="--")
    for x, text in zip(GROUP_EDGES, ("rare | common", "common | frequent")):
        ax.text(x, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=7, color="grey")
    ax.set_xlabel("training images of the class (log; methods dodged slightly)")
    ax.set_ylabel("mask AP (%)")
    ax.set_title("Per-class mask AP against training frequency (mean over seeds)", pad=14)
    if not rows:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- entry points

def default_data_root() -> str:
    """$DETECTRON2_DATASETS (default ./datasets) as seen from the repository root, like
    tools/demo.py: the benchmark and its diagnostics read the same set wherever they run."""
    data_root = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    return data_root if os.path.isabs(data_root) else os.path.join(ROOT, data_root)


def benchmark_data_root(out: str) -> str:
    """The data root the benchmark table in ``out`` was made with, for the diagnostics that
    re-evaluate its runs: the ``data_root`` its results.md records when that folder exists here,
    else where ``prepare_data`` puts the recorded preset's set by default."""
    settings = {}
    try:
        with open(os.path.join(out, "results.md")) as f:
            line = next((ln for ln in f if ln.startswith("* settings: ")), "")
    except OSError:
        line = ""
    if "data_root=" in line:  # the last setting: the rest of the line, commas included
        head, settings["data_root"] = line.rstrip("\n").split("data_root=", 1)
        for item in head[len("* settings: "):].split(", "):
            key, _, value = item.partition("=")
            settings[key] = value
    recorded = settings.get("data_root", "")
    if recorded and os.path.isdir(recorded):
        return recorded
    preset = settings.get("preset", "default")
    if preset == "default":
        return default_data_root()
    return os.path.join(os.path.abspath(out), "datasets", preset)


def prepare_data(preset: str, out: str, data_root: Optional[str] = None) -> tuple:
    """Generate (idempotently) the synthetic set; returns (data root, generator info)."""
    if data_root is None:
        if preset == "default":
            data_root = default_data_root()
        else:  # never overwrite the shared default set: generate() replaces another preset
            data_root = os.path.join(os.path.abspath(out), "datasets", preset)
    data_root = os.path.abspath(data_root)
    info = _synthetic().generate(os.path.join(data_root, SYNTHETIC_DIR), preset=preset, seed=DATA_SEED)
    return data_root, info


def run_benchmark(methods: Sequence = DEFAULT_METHODS, seeds: Sequence[int] = (0, 1, 2),
                  out: str = os.path.join(ROOT, "benchmarks", "results", "longtail"),
                  preset: str = "default", extra_opts: Sequence[str] = (), runner: Optional[Runner] = None,
                  iters_scale: float = 1.0, data_root: Optional[str] = None,
                  command: Optional[str] = None, log=_print, dry_run: bool = False) -> dict:
    """Plan, run (cache-aware) and report the benchmark. ``runner(run) -> return code`` is
    called for every run to execute (default: tools/train_net.py subprocess). Returns a dict
    with ``runs`` (Run objects: status ok | cached | failed | skipped | not implemented),
    ``summary`` (per method) and ``paths`` of the written outputs."""
    out = os.path.abspath(out)
    seeds = [int(s) for s in seeds]
    data_root, info = prepare_data(preset, out, data_root)
    log(f"synthetic set ({preset}): {info['num_classes']} classes, {info['num_train_images']} train / "
        f"{info['num_val_images']} val images in {data_root}")
    runs = plan(methods, seeds, out, preset, extra_opts, iters_scale, data_root,
                num_classes=info["num_classes"] if preset != "default" else None)
    settings = dict(preset=preset, seeds=" ".join(map(str, seeds)), iters_scale=iters_scale,
                    extra_opts=" ".join(map(str, extra_opts)) or "none", data_root=data_root)
    if command is None:
        command = (f"run_benchmark(methods={[getattr(m, 'name', m) for m in methods]}, seeds={seeds}, "
                   f"out={out!r}, preset={preset!r}, extra_opts={list(extra_opts)}, iters_scale={iters_scale})")
    if dry_run:
        for r in runs:
            log(f"seed {r.seed} {r.name}: " + (r.status if r.status != PLANNED else
                ("cached" if cached(r, repair=False) else "to run") + "\n    " + " ".join(map(shlex.quote, r.cmd))))
        return dict(runs=runs, summary=summarize(runs), paths={})
    start = time.time()
    execute(runs, runner or subprocess_runner, log=log,
            on_update=lambda: write_results(runs, out, command, settings, plots=False))
    paths = write_results(runs, out, command, settings)
    counts = {s: sum(r.status == s for r in runs) for s in (OK, CACHED, FAILED, SKIPPED, NOT_IMPLEMENTED)}
    log(f"finished in {_fmt_duration(time.time() - start)}: "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f"\nresults: {paths['md']}")
    return dict(runs=runs, summary=summarize(runs), paths=paths)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (cfg SEED)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, metavar="METHOD",
                        help="methods to compare (default: all known): " + ", ".join(KNOWN_METHODS))
    parser.add_argument("--out", default=None,
                        help="output folder (default: benchmarks/results/longtail; with _<preset> "
                             "for another preset and _custom with --iters-scale / --extra-opts, "
                             "so a smoke run keeps off the table)")
    parser.add_argument("--preset", default="default", help="synthetic preset: default | tiny")
    parser.add_argument("--iters-scale", type=float, default=1.0,
                        help="multiply every config's MAX_ITER, STEPS and WARMUP_ITERS")
    parser.add_argument("--extra-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides for every run (after the configs, before "
                             "SEED/OUTPUT_DIR); MODEL.WEIGHTS here is the base models' start, "
                             "decoupled runs always load their base's model_final.pth")
    parser.add_argument("--data-root", default=None, help="DETECTRON2_DATASETS for the runs")
    parser.add_argument("--list", action="store_true", help="list the known methods and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and cache state only")
    args = parser.parse_args(argv)
    if args.list:
        for m in list(BASES.values()) + list(KNOWN_METHODS.values()):
            where = m.config or "not implemented"
            print(f"{m.name:17s} {where:38s} {' '.join(m.opts):26s} {m.description}")
        return 0
    if args.preset not in _synthetic().PRESETS:
        parser.error(f"unknown preset {args.preset!r}; choose from {sorted(_synthetic().PRESETS)}")
    try:
        resolve_methods(args.methods)
        _check_extra_opts(args.extra_opts)
    except ValueError as e:
        parser.error(str(e))
    if args.out is None:
        args.out = default_out(args.preset, args.iters_scale, args.extra_opts)
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(os.path.abspath(__file__), os.getcwd())]
                       + (sys.argv[1:] if argv is None else list(argv)))
    result = run_benchmark(args.methods, args.seeds, args.out, args.preset, args.extra_opts,
                           iters_scale=args.iters_scale, data_root=args.data_root,
                           command="python " + command, dry_run=args.dry_run)
    if not args.dry_run:
        with open(result["paths"]["md"]) as f:
            print("\n" + f.read().split("\n## Per seed")[0])
    return 1 if any(r.status == FAILED for r in result["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
