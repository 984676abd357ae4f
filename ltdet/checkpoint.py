"""detectron2's checkpointer with an explained error for softmax/sigmoid classifier mix-ups, the
config fingerprint that --resume checks, and atomic checkpoint writes (docs/OUTPUTS_AND_RESUME.md).
"""

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .file_io import atomic_open
from .modeling.classifier_init import convert_softmax_classifier
from .modeling.loss_registry import loss_names

logger = logging.getLogger(__name__)

_CLS_KEY = "box_predictor.cls_score.weight"


def _either(names) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


# checkpointables the Trainer adds with LTDET.META / LTDET.M2M
LTDET_STATE = ("meta_reweigher", "m2m")


def check_classifier_shape(
    model_state: Dict[str, torch.Tensor], ckpt_state: Dict[str, torch.Tensor]
) -> None:
    """Raise if a checkpoint's box classifier has K+1 outputs where the model has K, or the
    reverse: a softmax-family checkpoint loaded into a sigmoid-family head (or vice versa).
    detectron2 would otherwise skip the layer with a warning and train a fresh classifier."""
    for key, param in model_state.items():
        if not key.endswith(_CLS_KEY) or key not in ckpt_state:
            continue
        theirs, ours = ckpt_state[key].shape[0], param.shape[0]
        if theirs == ours + 1:
            kind = (
                "a softmax-family model (K+1 logits, with background)",
                "sigmoid-family (K logits)",
                _either(loss_names(background=True))
                + " (or set LTDET.LOSS.SIGMOID_FROM_SOFTMAX True to start the K sigmoid logits "
                "from the softmax ones, docs/MODEL_ZOO.md)",
            )
        elif theirs + 1 == ours:
            kind = (
                "a sigmoid-family model (K logits, no background)",
                "softmax-family (K+1 logits)",
                _either(loss_names(background=False)),
            )
        else:
            continue  # a different class count: detectron2's usual skip-and-warn fine-tuning
        raise ValueError(
            f"checkpoint classifier {key} has {theirs} outputs but the model's has {ours}: the "
            f"checkpoint is {kind[0]} while LTDET.LOSS.NAME makes this head {kind[1]}. Use a base "
            f"model trained with the same loss family, or set LTDET.LOSS.NAME to {kind[2]}."
        )


# (what needs the checkpoint, what MODEL.WEIGHTS should be, what the checkpoint must be)
DECOUPLED = (
    "the decoupled regime (LTDET.DECOUPLED.ENABLED) fine-tunes a base model",
    "the base model's model_final.pth",
    "a base model of this architecture",
)
EVAL_ONLY = (
    "--eval-only evaluates a trained model",
    "the trained model's model_final.pth",
    "a trained model of this architecture",
)


def check_complete(
    model_state: Dict[str, torch.Tensor],
    ckpt_state: Dict[str, torch.Tensor],
    path: str = "the checkpoint",
    purpose: Tuple[str, str, str] = DECOUPLED,
) -> None:
    """Raise unless every model tensor is in the checkpoint with the same shape (a decoupled
    fine-tuning must start from a base model of this exact architecture; an evaluation must not
    run on freshly initialised layers)."""
    missing = [k for k in model_state if k not in ckpt_state]
    mismatched = [
        f"{k}: checkpoint {tuple(ckpt_state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in ckpt_state and tuple(ckpt_state[k].shape) != tuple(v.shape)
    ]
    if missing or mismatched:
        raise ValueError(
            f"{path} is not {purpose[2]}: {len(missing)} missing keys {missing[:8]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:8]}. {purpose[0]}: set MODEL.WEIGHTS "
            f"to {purpose[1]} of a run with this config."
        )


# The config keys a checkpoint's fingerprint records: those that define the model, its loss and
# its training data. A --resume whose config differs in one of them is refused. A key listed here
# covers its sub-keys, FINGERPRINT_EXCLUDED carves some out. Everything else may change on resume:
# the schedule (SOLVER.*, SEED), outputs (OUTPUT_DIR, TEST.*, LTDET.EVAL.*, logging periods),
# where the weights came from (MODEL.WEIGHTS) and speed knobs that give the same numbers.
FINGERPRINT_KEYS = (
    "MODEL",
    "LTDET",
    "DATASETS.TRAIN",
    "INPUT",
    "DATALOADER.SAMPLER_TRAIN",
    "DATALOADER.REPEAT_THRESHOLD",
    "DATALOADER.REPEAT_SQRT",
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    "DATALOADER.ASPECT_RATIO_GROUPING",
)
FINGERPRINT_EXCLUDED = (
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "LTDET.EVAL",
    "LTDET.META.LOG_PERIOD",
    "LTDET.DECOUPLED.TRUNK_CHUNK",
)
FINGERPRINT = "config_fingerprint"  # its key in a checkpoint file
CHANGED_CONFIG_FLAG = "--resume-changed-config"  # tools/train_net.py's override


def _plain(value: Any) -> Any:
    # yacs gives tuples from defaults and lists from yaml files: compare them as equal
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_fingerprint(cfg) -> Dict[str, Any]:
    """The values of the FINGERPRINT_KEYS of ``cfg`` (a detectron2 CfgNode), flat: "A.B.C" ->
    value. Stored in every checkpoint, so a refused resume can name both values of a key."""
    out: Dict[str, Any] = {}

    def visit(node, prefix: str) -> None:
        if prefix in FINGERPRINT_EXCLUDED:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix}.{key}")
        else:
            out[prefix] = _plain(node)

    for key in FINGERPRINT_KEYS:
        node = cfg
        for part in key.split("."):
            if part not in node:  # e.g. DATALOADER.REPEAT_SQRT, absent in detectron2 v0.6
                break
            node = node[part]
        else:
            visit(node, key)
    return out


def fingerprint_differences(
    saved: Dict[str, Any], current: Dict[str, Any]
) -> List[Tuple[str, Any, Any]]:
    """(key, checkpoint's value, config's value) for every key both have with different values.
    A key only one side has (a config key added or removed by an ltdet or detectron2 update)
    is no difference: its default keeps the old behaviour."""
    return [
        (k, saved[k], current[k]) for k in sorted(saved) if k in current and saved[k] != current[k]
    ]


def check_resume_config(
    saved: Optional[Dict[str, Any]],
    current: Dict[str, Any],
    path: str,
    *,
    changed_config_ok: bool = False,
) -> None:
    """Raise if the checkpoint ``path`` (fingerprint ``saved``) was trained with another recipe
    than ``current`` (FINGERPRINT_KEYS); with ``changed_config_ok`` only warn. A checkpoint
    without a fingerprint (written before ltdet recorded them) resumes with a warning."""
    if saved is None:
        logger.warning(
            "%s records no config fingerprint (written before ltdet recorded one): "
            "resuming without checking that it was trained with this config",
            path,
        )
        return
    diff = fingerprint_differences(saved, current)
    if not diff:
        return
    listed = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diff)
    if changed_config_ok:
        logger.warning(
            "resuming %s with a changed config (%s): %s", path, CHANGED_CONFIG_FLAG, listed
        )
        return
    raise ValueError(
        f"--resume refused: {path} was trained with another config; {len(diff)} key(s) that "
        f"define the model, loss or data differ: {listed}. Resume with the config that run used, "
        f"train into a new OUTPUT_DIR, or, for a deliberate change, add {CHANGED_CONFIG_FLAG} "
        "(tools/train_net.py). Nothing in OUTPUT_DIR was changed"
    )


def last_checkpoint(output_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` would load from ``output_dir`` (named by its
    ``last_checkpoint`` file, as fvcore's checkpointer finds it), or None."""
    tag = os.path.join(output_dir, "last_checkpoint")
    if not output_dir or not os.path.isfile(tag):
        return None
    with open(tag) as f:
        name = f.read().strip()
    return os.path.join(output_dir, name) if name else None


def read_fingerprint(path: str) -> Optional[Dict[str, Any]]:
    """The config fingerprint stored in checkpoint ``path`` (None: written before ltdet stored
    one). Memory-mapped: the tensors are not read."""
    try:
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # a legacy (non-zip) file, or objects weights_only refuses: read it whole
        data = torch.load(path, map_location="cpu", weights_only=False)
    return data.get(FINGERPRINT) if isinstance(data, dict) else None


def check_resume(cfg, *, changed_config_ok: bool = False) -> None:
    """Start-up check of ``--resume`` (before anything in OUTPUT_DIR is written): refuse if the
    checkpoint it would load was trained with another recipe (``check_resume_config``)."""
    path = last_checkpoint(cfg.OUTPUT_DIR)
    if path is None or not os.path.isfile(path):
        return  # nothing to resume: a fresh start (the checkpointer loads MODEL.WEIGHTS)
    check_resume_config(
        read_fingerprint(path), config_fingerprint(cfg), path, changed_config_ok=changed_config_ok
    )


def _non_finite(obj: Any, prefix: str = "") -> Optional[str]:
    """The name of the first floating tensor in ``obj`` (nested dicts / lists) with a NaN or inf."""
    if isinstance(obj, torch.Tensor):
        return prefix if obj.is_floating_point() and not torch.isfinite(obj).all() else None
    items = (
        obj.items()
        if isinstance(obj, dict)
        else enumerate(obj)
        if isinstance(obj, (list, tuple))
        else ()
    )
    for key, value in items:
        found = _non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


class LongTailCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that explains classifier mix-ups and, with ``require_complete``,
    refuses checkpoints that do not cover the whole model; ``purpose`` (DECOUPLED or EVAL_ONLY)
    says why in the error. With ``fingerprint`` (``config_fingerprint(cfg)``) it stores the
    recipe in every checkpoint and a resume refuses a checkpoint of another recipe
    (``changed_config_ok``: only warn). Checkpoints are written to a temporary name and renamed,
    and one whose weights are not finite is not written (``last_checkpoint`` keeps naming the
    last good one)."""

    def __init__(
        self,
        model,
        save_dir="",
        *,
        require_complete: bool = False,
        purpose: Tuple[str, str, str] = DECOUPLED,
        sigmoid_from_softmax: bool = False,
        fingerprint: Optional[Dict[str, Any]] = None,
        **checkpointables,
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.sigmoid_from_softmax = sigmoid_from_softmax  # LTDET.LOSS.SIGMOID_FROM_SOFTMAX
        self.require_complete = require_complete
        self.purpose = purpose
        self.fingerprint = fingerprint
        self.changed_config_ok = False  # set by Trainer.resume_or_load (--resume-changed-config)
        self._requested: List[str] = []  # checkpointables the current load() asks for

    def save(self, name: str, **kwargs: Any) -> None:
        # fvcore's save, with the fingerprint, the finiteness check and atomic writes: a reader
        # (or a second job on a shared file system) never sees a half-written .pth
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if self.fingerprint is not None:
            data[FINGERPRINT] = self.fingerprint
        basename = f"{name}.pth"
        bad = _non_finite({"model": data["model"]})
        if bad is not None:
            logger.error(
                "not saving %s: %s is not finite (the training diverged); %s still names "
                "the last finite checkpoint",
                basename,
                bad,
                os.path.join(self.save_dir, "last_checkpoint"),
            )
            return
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def resume_or_load(self, path: str, *, resume: bool = True):
        # fvcore treats an empty path as "nothing to load": a decoupled run would then train a
        # classifier on a randomly initialised frozen trunk, an evaluation score one.
        if self.require_complete and not path and not (resume and self.has_checkpoint()):
            raise ValueError(
                f"{self.purpose[0]}, but MODEL.WEIGHTS is empty: set it to {self.purpose[1]}"
            )
        return super().resume_or_load(path, resume=resume)

    def load(self, path: str, checkpointables: Optional[List[str]] = None):
        # fvcore loads only the checkpointables the file has: a resume whose config enables
        # the Meta Reweigher or M2m where the saved run did not would silently start them fresh
        # (M2m's g would even copy the fine-tuned classifier), the reverse drop them.
        self._requested = list(self.checkpointables if checkpointables is None else checkpointables)
        return super().load(path, checkpointables)

    def _check_checkpointables(self, checkpoint) -> None:
        if not self._requested:  # loading weights only (MODEL.WEIGHTS), not resuming
            return
        missing = [k for k in self._requested if k not in checkpoint]
        unused = [k for k in LTDET_STATE if k in checkpoint and k not in self._requested]
        what = ([f"lacks {missing}"] if missing else []) + (
            [f"holds {unused}, which this config has no place for"] if unused else []
        )
        if what:
            raise ValueError(
                f"the checkpoint to resume from {' and '.join(what)}: it was saved by a run with "
                "other LTDET options (META / M2M). Resume with the config that run used, or "
                "train into a new OUTPUT_DIR"
            )

    def _load_model(self, checkpoint):
        self._check_checkpointables(checkpoint)
        if self._requested and self.fingerprint is not None:  # a resume, not MODEL.WEIGHTS
            check_resume_config(
                checkpoint.get(FINGERPRINT),
                self.fingerprint,
                self.get_checkpoint_file(),
                changed_config_ok=self.changed_config_ok,
            )
        if self.sigmoid_from_softmax:
            convert_softmax_classifier(self.model.state_dict(), checkpoint["model"])
        check_classifier_shape(self.model.state_dict(), checkpoint["model"])
        if self.require_complete:
            check_complete(self.model.state_dict(), checkpoint["model"], purpose=self.purpose)
        return super()._load_model(checkpoint)
