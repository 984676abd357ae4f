"""The long-tail benchmark's runs: the methods, their configs and cache, the synthetic data, and
running them (subprocesses of tools/train_net.py)."""

from __future__ import annotations

import csv
import glob
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "configs", "synthetic")
# The recipes of each preset (the tiny preset trains the default recipes, shortened by opts).
PRESET_CONFIG_DIRS = {"lv": os.path.join(ROOT, "configs", "synthetic_lv")}
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
EVALUATE = os.path.join(ROOT, "tools", "evaluate.py")
DATA_SEED = 0  # the dataset is the same for every training seed

# The validation protocols (docs/SYNTHETIC_PROTOCOLS.md), each a val json over the same images and
# annotations: name -> suffix of the dataset / json name. A run's model is evaluated once, on the
# first (LVIS's negative protocol, the headline); the same detections are then scored against the
# others' jsons by tools/evaluate.py, so the protocols differ in nothing but the labels.
PROTOCOLS = {"lvis": "", "hardneg": "_hardneg"}
HEADLINE = "lvis"
PROTOCOL_TITLES = {
    "lvis": "LVIS's negative protocol (random absent categories as verified negatives)",
    "hardneg": "hard-negative stress test (every confusable sibling of a present class a negative)",
}


def preset_config_dir(preset: str) -> str:
    return PRESET_CONFIG_DIRS.get(preset, CONFIG_DIR)


def dataset_dir(preset: str) -> str:
    """The preset's folder under $DETECTRON2_DATASETS, which is also its datasets' name prefix."""
    return synthetic_module().DATASET_DIRS[preset]


def val_dataset(preset: str, protocol: str = HEADLINE) -> str:
    return f"{dataset_dir(preset)}_val{PROTOCOLS[protocol]}"


# (column label, task, metric) of the tables; mask AP = segm.
METRICS = [
    ("mask AP", "segm", "AP"),
    ("APr", "segm", "APr"),
    ("APc", "segm", "APc"),
    ("APf", "segm", "APf"),
    ("box AP", "bbox", "AP"),
]
CSV_METRICS = ["segm_AP", "segm_APr", "segm_APc", "segm_APf", "bbox_AP"]

OK, CACHED, FAILED, SKIPPED, NOT_IMPLEMENTED, PLANNED = (
    "ok",
    "cached",
    "failed",
    "skipped",
    "not implemented",
    "planned",
)


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
    # Another method this one is paired with, seed by seed, in a table of its own (a variant of
    # it: the same loss from another starting point).
    counterpart: Optional[str] = None


BASES = {
    "softmax": Method(
        "base_softmax_rfs",
        "base_softmax_rfs.yaml",
        description="instance-balanced base: softmax + repeat-factor sampling",
    ),
    "sigmoid": Method(
        "base_sigmoid_rfs",
        "base_sigmoid_rfs.yaml",
        description="instance-balanced base: sigmoid + repeat-factor sampling",
    ),
}

# The methods of the paper list, in table order. Unimplemented ones have no config.
KNOWN_METHODS: Dict[str, Method] = {
    m.name: m
    for m in [
        Method("softmax", "decoupled/softmax.yaml", "softmax", description="re-training baseline"),
        Method(
            "balanced_softmax",
            "decoupled/balanced_softmax.yaml",
            "softmax",
            description="Balanced Softmax (BALMS A.1 Eq. 10)",
        ),
        Method(
            "balms",
            "decoupled/balms.yaml",
            "softmax",
            description="Balanced Softmax + Meta Reweigher",
        ),
        Method("sigmoid", "decoupled/sigmoid.yaml", "sigmoid", description="K binary classifiers"),
        Method(
            "balanced_sigmoid",
            "decoupled/balanced_sigmoid.yaml",
            "sigmoid",
            description="sigmoid with the balanced prior (BALMS A.2 Eq. 23)",
        ),
        Method(
            "balms_sigmoid",
            "decoupled/balms_sigmoid.yaml",
            "sigmoid",
            description="balanced sigmoid + Meta Reweigher",
        ),
        Method(
            "eql",
            "decoupled/eql.yaml",
            "sigmoid",
            description="Equalization Loss (Tan et al. 2020), lambda scaled to this set",
        ),
        Method(
            "federated",
            "decoupled/federated.yaml",
            "sigmoid",
            description="federated loss (Zhou et al. 2021), class count scaled to this set",
        ),
        Method(
            "two_component",
            "decoupled/two_component.yaml",
            "softmax",
            description="two-component meta weights (Jamal et al. 2020)",
        ),
        Method(
            "dbm_bs",
            "decoupled/dbm_bs.yaml",
            "softmax",
            description="difficulty-aware balancing margins + Balanced Softmax (Son et al. 2025)",
        ),
        Method(
            "m2m",
            "decoupled/m2m.yaml",
            "softmax",
            description="softmax + major-to-minor feature translation (Kim et al. 2020)",
        ),
        # Sigmoid-family fine-tuning from the softmax base: the K sigmoid logits start as each
        # class's softmax logit minus the background's (ltdet/modeling/classifier_init.py), the
        # start a user of the model zoo's softmax checkpoints gets. Paired with the same loss
        # from the sigmoid base.
        Method(
            "sigmoid_from_softmax",
            "decoupled/sigmoid.yaml",
            "softmax",
            opts=("LTDET.LOSS.SIGMOID_FROM_SOFTMAX", "True"),
            description="sigmoid, classifier initialised from the softmax base's",
            counterpart="sigmoid",
        ),
        Method(
            "balanced_sigmoid_from_softmax",
            "decoupled/balanced_sigmoid.yaml",
            "softmax",
            opts=("LTDET.LOSS.SIGMOID_FROM_SOFTMAX", "True"),
            description="balanced sigmoid, classifier initialised from the softmax base's",
            counterpart="balanced_sigmoid",
        ),
    ]
}
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
    metrics: Optional[dict] = None  # of the headline protocol; every protocol's in all_metrics
    all_metrics: Dict[str, dict] = field(default_factory=dict)
    preset: str = "default"
    protocol: str = HEADLINE  # whose metrics ``metrics`` and ``per_class_path`` are

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def is_base(self) -> bool:
        return self.method.base is None and self.method.implemented

    def inference_dir(self, protocol: str = HEADLINE) -> str:
        return os.path.join(self.out_dir, "inference", val_dataset(self.preset, protocol))

    @property
    def metrics_path(self) -> str:
        return self.protocol_metrics_path(HEADLINE)

    def protocol_metrics_path(self, protocol: str) -> str:
        return os.path.join(self.inference_dir(protocol), "lvis_metrics.json")

    @property
    def per_class_path(self) -> str:
        return self.protocol_per_class_path(self.protocol)

    def protocol_per_class_path(self, protocol: str) -> str:
        return os.path.join(self.inference_dir(protocol), "per_class_ap.csv")

    @property
    def detections_path(self) -> str:
        """The detections the run's own evaluation wrote (headline protocol's folder)."""
        return os.path.join(self.inference_dir(HEADLINE), "lvis_instances_results.json")

    def read_metrics(self) -> bool:
        """Load every protocol's metrics; True when all are there and readable."""
        self.all_metrics = {
            p: m for p in PROTOCOLS if (m := read_json(self.protocol_metrics_path(p))) is not None
        }
        self.metrics = self.all_metrics.get(HEADLINE)
        return len(self.all_metrics) == len(PROTOCOLS)

    def for_protocol(self, protocol: str) -> "Run":
        """A copy whose ``metrics`` are ``protocol``'s (the report's tables read ``metrics``);
        a trained run without them (its scoring failed) is a failed run of that table."""
        metrics = self.all_metrics.get(protocol)
        if metrics is None and self.status in (OK, CACHED):
            reason = self.reason or f"no {protocol} metrics"
            return replace(self, metrics=None, status=FAILED, reason=reason, protocol=protocol)
        return replace(self, metrics=metrics, protocol=protocol)

    def summary(self) -> dict:
        return dict(
            method=self.name,
            seed=self.seed,
            status=self.status,
            reason=self.reason,
            returncode=self.returncode,
            duration_s=self.duration_s,
            hash=self.hash,
            out_dir=self.out_dir,
            metrics=self.metrics,
        )


Runner = Callable[[Run], int]
Scorer = Callable[[Run, str], int]


def _logged_subprocess(cmd: List[str], run: Run, mode: str) -> int:
    """``cmd`` in a subprocess with the run's env, the command line and stdout+stderr written to
    ``run.log_path`` (``mode`` "w" starts the log, "a" appends to it)."""
    with open(run.log_path, mode) as log:
        log.write(("\n" if mode == "a" else "") + "$ " + shlex.join(cmd) + "\n")
        log.flush()
        return subprocess.run(
            cmd, env=run.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        ).returncode


def subprocess_runner(run: Run) -> int:
    """Default runner: tools/train_net.py in a subprocess, stdout+stderr into ``run.log_path``."""
    return _logged_subprocess(run.cmd, run, "w")


def val_json(data_root: str, preset: str, protocol: str) -> str:
    """The val json of ``protocol`` in the preset's folder under ``data_root``."""
    return os.path.join(
        data_root, dataset_dir(preset), f"lvis_synthetic_val{PROTOCOLS[protocol]}.json"
    )


def scoring_command(run: Run, protocol: str) -> List[str]:
    """tools/evaluate.py scoring the run's detections against ``protocol``'s val json."""
    data_root = run.env.get("DETECTRON2_DATASETS", "")
    return [
        sys.executable,
        EVALUATE,
        "--gt",
        val_json(data_root, run.preset, protocol),
        "--dt",
        run.detections_path,
        "--train-json",
        os.path.join(data_root, dataset_dir(run.preset), "lvis_synthetic_train.json"),
        "--output",
        run.inference_dir(protocol),
        "--title",
        f"{run.name} seed {run.seed}, {protocol} protocol",
    ]


def subprocess_scorer(run: Run, protocol: str) -> int:
    """Default scorer: ``scoring_command`` in a subprocess, appending to the run's log."""
    return _logged_subprocess(scoring_command(run, protocol), run, "a")


def read_json(path: str) -> Optional[dict]:
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
    return [
        "SOLVER.MAX_ITER",
        str(it(max_iter)),
        "SOLVER.STEPS",
        "(" + "".join(f"{s}," for s in kept) + ")",
        "SOLVER.WARMUP_ITERS",
        str(int(round(warmup * scale))),
    ]


def _file_digest(paths: Sequence[str]) -> List[List[str]]:
    out = []
    for p in sorted(set(paths)):
        with open(p, "rb") as f:
            out.append([os.path.relpath(p, ROOT), hashlib.sha256(f.read()).hexdigest()])
    return out


def config_hash(method: Method, opts: Sequence[str], preset: str, base_hash: str = "") -> str:
    """Hash of everything that defines a run except its seed (the seed is in its directory)."""
    # Only the run's own _BASE_ chain: adding a recipe must not invalidate the other runs.
    config = os.path.join(preset_config_dir(preset), method.config)
    payload = dict(
        files=_file_digest(_config_chain(config)),
        config=method.config,
        opts=[str(o) for o in opts],
        preset=preset,
        data_seed=DATA_SEED,
        generator_version=synthetic_module().VERSION,
        base=base_hash,
    )
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def synthetic_module():
    """ltdet.data.synthetic loaded from its file: importing the ltdet package would import
    detectron2 (seconds) in the orchestrating process, which never needs it."""
    mod = sys.modules.get("ltdet.data.synthetic") or sys.modules.get("_ltdet_synthetic")
    if mod is None:
        spec = importlib.util.spec_from_file_location(
            "_ltdet_synthetic", os.path.join(ROOT, "ltdet", "data", "synthetic.py")
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_ltdet_synthetic"] = mod
        spec.loader.exec_module(mod)
    return mod


def default_out(
    preset: str = "default", iters_scale: float = 1.0, extra_opts: Sequence[str] = ()
) -> str:
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
        raise FileNotFoundError(
            f"no benchmark table {table}; run python -m benchmarks.longtail first "
            "(or pass its --out)"
        )
    with open(table, newline="") as f:
        # one row per protocol (the training's status is the headline's), or one in older tables
        rows = [
            r
            for r in csv.DictReader(f)
            if r["method"] == method
            and r["seed"] == str(seed)
            and r.get("protocol", HEADLINE) == HEADLINE
        ]
    if not rows:
        raise FileNotFoundError(
            f"{table} has no run of {method} seed {seed}; re-run python -m benchmarks.longtail "
            f"with every method and seed the table should hold, {method} seed {seed} included "
            "(cached runs are reused; the table lists only the runs of its last invocation)"
        )
    if rows[0]["status"] not in (OK, CACHED):
        raise FileNotFoundError(
            f"{method} seed {seed} did not complete in {table} (status "
            f"{rows[0]['status']}: {rows[0]['reason']}); re-run python -m benchmarks.longtail"
        )
    return os.path.join(os.path.dirname(os.path.abspath(table)), rows[0]["run_dir"])


def cached(run: Run, repair: bool = True) -> bool:
    """Complete with the same hash (and, for a decoupled run, the same base training).
    ``repair``: write the missing done.json of a run stopped right after its evaluation."""
    if not os.path.isfile(run.metrics_path) or os.path.exists(
        os.path.join(run.out_dir, "failed.json")
    ):
        return False
    if read_json(run.metrics_path) is None:  # truncated or broken: run it again
        return False
    done = read_json(os.path.join(run.out_dir, "done.json"))
    if done is None:  # metrics written but the process was stopped before done.json
        if not repair:
            return False
        done = dict(
            hash=run.hash,
            run_id=uuid.uuid4().hex,
            duration_s=None,
            base_run_id=run.base_run.run_id if run.base_run else None,
        )
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


def check_extra_opts(extra_opts: Sequence[str]) -> List[str]:
    extra = [str(o) for o in extra_opts]
    if len(extra) % 2:
        raise ValueError(f"--extra-opts needs KEY VALUE pairs, got {len(extra)} items: {extra}")
    owned = {"SEED", "OUTPUT_DIR"} & set(extra[0::2])
    if owned:
        raise ValueError(
            f"{sorted(owned)} are set by the benchmark per run; not allowed in extra opts"
        )
    return extra


def plan(
    methods: Sequence,
    seeds: Sequence[int],
    out: str,
    preset: str = "default",
    extra_opts: Sequence[str] = (),
    iters_scale: float = 1.0,
    data_root: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> List[Run]:
    """Every run in execution order (per seed: bases, then methods), with commands and hashes.
    Unimplemented methods are included as runs with status "not implemented"."""
    methods = resolve_methods(methods)
    extra = check_extra_opts(extra_opts)
    out = os.path.abspath(out)
    preset_opts = []
    if num_classes is not None:
        preset_opts += ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)]
    if preset != "default":
        size = str(synthetic_module().PRESETS[preset]["image_size"])
        preset_opts += [
            "INPUT.MIN_SIZE_TRAIN",
            f"({size},)",
            "INPUT.MAX_SIZE_TRAIN",
            size,
            "INPUT.MIN_SIZE_TEST",
            size,
            "INPUT.MAX_SIZE_TEST",
            size,
        ]
    # One inference pass, on the headline protocol's set; the others score its detections.
    test_opts = ["DATASETS.TEST", f"('{val_dataset(preset)}',)"]
    env = dict(os.environ)
    if data_root:
        env["DETECTRON2_DATASETS"] = data_root
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])

    bases_needed = ["softmax"] + (
        ["sigmoid"] if any(m.implemented and m.base == "sigmoid" for m in methods) else []
    )
    runs: List[Run] = []

    def make(method: Method, seed: int, base: Optional[Run]) -> Run:
        run = Run(method=method, seed=seed, base_run=base, preset=preset)
        if not method.implemented:
            run.status, run.reason = NOT_IMPLEMENTED, method.description
            return run
        config = os.path.join(preset_config_dir(preset), method.config)
        run.opts = (
            [str(o) for o in method.opts]
            + preset_opts
            + test_opts
            + scaled_schedule_opts(config, iters_scale)
            + extra
        )
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


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _estimate(remaining: List[Run], fresh: List[Run], cached_runs: List[Run]) -> Optional[float]:
    """Seconds left. Each run takes the mean duration of the closest finished runs: the same
    method, else the same kind (base / decoupled), else any; within each, the runs finished in
    this invocation (this machine, now) before the cached ones (this invocation's, and the same
    runs of other seeds in the cache). A base model takes ~6x as long
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


def _same_runs_of_other_seeds(todo: List[Run]) -> List[Run]:
    """Finished runs in the cache with the same method and hash as a planned run but another
    seed (same config, so a comparable duration): extending a table with a new seed or method then
    estimates a fine-tune from fine-tunes, not from whatever this invocation has seen (a base)."""
    planned = {os.path.abspath(r.out_dir) for r in todo}
    past = []
    for r in todo:
        pattern = os.path.join(os.path.dirname(os.path.dirname(r.out_dir)), "seed*")
        for seed_dir in sorted(glob.glob(pattern)):
            out_dir = os.path.join(seed_dir, os.path.basename(r.out_dir))
            done = read_json(os.path.join(out_dir, "done.json"))
            if os.path.abspath(out_dir) in planned or not done or not done.get("duration_s"):
                continue
            past.append(Run(r.method, done.get("seed", -1), duration_s=done["duration_s"]))
    return past


def print_line(msg: str) -> None:
    print(msg, flush=True)


def score_protocols(run: Run, scorer: Scorer = subprocess_scorer) -> str:
    """Score the run's detections under every protocol that has no metrics yet (a cached run
    trained before a protocol existed is scored without re-training). Returns "" or why not."""
    for protocol in PROTOCOLS:
        path = run.protocol_metrics_path(protocol)
        if protocol == HEADLINE or read_json(path) is not None:
            continue
        try:
            rc = scorer(run, protocol)
        except Exception as e:  # a scorer bug must not lose the other runs
            rc = -1
            with open(run.log_path, "a") as f:
                f.write(f"\nscorer raised {type(e).__name__}: {e}\n")
        if rc != 0 or read_json(path) is None:
            return f"scoring the {protocol} protocol failed (exit code {rc}; log {run.log_path})"
    return ""


def execute(
    runs: List[Run],
    runner: Runner = subprocess_runner,
    log=print_line,
    on_update: Optional[Callable[[], None]] = None,
    scorer: Scorer = subprocess_scorer,
) -> List[Run]:
    """Run (or take from the cache) every planned run, in order, and score each under every
    protocol; never raises for a failed run."""
    todo = [r for r in runs if r.status == PLANNED]
    fresh: List[Run] = []
    cached_runs: List[Run] = []
    other_seeds = _same_runs_of_other_seeds(todo)
    for i, run in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] seed {run.seed} {run.name}"
        base = run.base_run
        if base is not None and base.status not in (OK, CACHED):
            run.status, run.reason = SKIPPED, f"base {base.name} {base.status}"
            log(f"{tag}: skipped ({run.reason})")
            continue
        if cached(run):
            run.status = CACHED
            run.reason = score_protocols(run, scorer)
            run.read_metrics()
            cached_runs.append(run)
            log(f"{tag}: cached ({run.out_dir})" + (f"; {run.reason}" if run.reason else ""))
            continue
        # Runs still to train; complete ones further on are skipped and lend their durations
        # (checked in order, so a cached base is resolved before its methods).
        ahead = [r for r in todo[i:] if r.status == PLANNED]
        done_ahead = [r for r in ahead if cached(r, repair=False)]
        left = [r for r in ahead if r not in done_ahead]
        eta = _estimate([run] + left, fresh, cached_runs + done_ahead + other_seeds)
        n_left = 1 + len(left)
        eta_text = (
            f"; about {fmt_duration(eta)} left for {n_left} run{'s' * (n_left > 1)}" if eta else ""
        )
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
        metrics = read_json(run.metrics_path) if rc == 0 else None
        if metrics is not None:
            run.status, run.run_id = OK, uuid.uuid4().hex
            run.reason = score_protocols(run, scorer)
            run.read_metrics()
            _write_json(
                os.path.join(run.out_dir, "done.json"),
                dict(
                    hash=run.hash,
                    run_id=run.run_id,
                    duration_s=run.duration_s,
                    seed=run.seed,
                    method=run.name,
                    cmd=run.cmd,
                    base_run_id=base.run_id if base else None,
                    git_commit=git_commit(ignore=os.path.join(run.out_dir, "..", "..", "..")),
                    finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                ),
            )
            fresh.append(run)
            log(
                f"{tag}: done in {fmt_duration(run.duration_s)}"
                + (f"; {run.reason}" if run.reason else "")
            )
        else:
            run.status = FAILED
            run.reason = (
                f"exit code {rc}"
                if rc != 0
                else "exit code 0 but lvis_metrics.json "
                + ("unreadable" if os.path.isfile(run.metrics_path) else "missing")
            )
            tail = _tail(run.log_path)
            _write_json(
                os.path.join(run.out_dir, "failed.json"),
                dict(
                    hash=run.hash,
                    returncode=rc,
                    reason=run.reason,
                    duration_s=run.duration_s,
                    seed=run.seed,
                    method=run.name,
                    cmd=run.cmd,
                    log=run.log_path,
                    log_tail=tail,
                ),
            )
            last = [ln for ln in tail.strip().splitlines() if ln.strip()][-1:] or [""]
            log(
                f"{tag}: FAILED ({run.reason}) after {fmt_duration(run.duration_s)}: "
                f"{last[0][:200]}\n    log: {run.log_path}"
            )
        if on_update is not None:
            on_update()
    return runs


def default_data_root() -> str:
    """$DETECTRON2_DATASETS (default ./datasets) as seen from the repository root, like
    tools/demo.py: the benchmark and its diagnostics read the same set wherever they run."""
    data_root = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    return data_root if os.path.isabs(data_root) else os.path.join(ROOT, data_root)


def benchmark_settings(out: str) -> Dict[str, str]:
    """The settings (preset, seeds, ..., data_root) the results.md in ``out`` records; empty
    when there is no table."""
    settings: Dict[str, str] = {}
    try:
        with open(os.path.join(out, "results.md")) as f:
            line = next((ln for ln in f if ln.startswith("* settings: ")), "")
    except OSError:
        line = ""
    if "data_root=" in line:  # the last setting: the rest of the line, commas included
        head, settings["data_root"] = line.rstrip("\n").split("data_root=", 1)
        for item in head[len("* settings: ") :].split(", "):
            key, _, value = item.partition("=")
            settings[key] = value
    return settings


def benchmark_preset(out: str) -> str:
    """The synthetic preset of the benchmark table in ``out`` (default when none is recorded),
    for the diagnostics that read its runs' val sets."""
    return benchmark_settings(out).get("preset", "default")


def benchmark_data_root(out: str) -> str:
    """The data root the benchmark table in ``out`` was made with, for the diagnostics that
    re-evaluate its runs: the ``data_root`` its results.md records when that folder exists here,
    else where ``prepare_data`` puts the recorded preset's set by default."""
    recorded = benchmark_settings(out).get("data_root", "")
    if recorded and os.path.isdir(recorded):
        return recorded
    preset = benchmark_preset(out)
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
    info = synthetic_module().generate(
        os.path.join(data_root, dataset_dir(preset)), preset=preset, seed=DATA_SEED
    )
    return data_root, info


def git_commit(ignore: Optional[str] = None) -> str:
    """HEAD, marked when tracked files differ from it. ``ignore``: the benchmark's output folder,
    whose tracked results files this tool rewrites after every run (they say nothing of the
    code)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=20
        )
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


def add_run_table_arguments(parser) -> None:
    """--out and --data-root of the scripts that read the benchmark's runs (its diagnostics)."""
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "benchmarks/results/longtail"),
        help="the benchmark's output folder: its results.csv names the runs used",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="DETECTRON2_DATASETS of the benchmark's runs (default: the one the table in --out "
        "records, or where python -m benchmarks.longtail puts its preset's set)",
    )
