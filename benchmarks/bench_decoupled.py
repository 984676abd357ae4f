"""Cost of one decoupled training step (BALMS supp. C.3) against the alternatives, same run.

Training steps of the same Mask R-CNN (same initial weights, same batches, only the box
classifier ``roi_heads.box_predictor.cls_score`` trainable) are timed in interleaved rounds:

  stock      detectron2's SimpleTrainer step: the full training forward ``model(batch)`` (RPN,
             box and mask losses), sum, backward, SGD step. What a plain detectron2 user does to
             fine-tune only the classifier.
  decoupled  ltdet's DecoupledTrainStep (Balanced Softmax, no reweigher): frozen trunk in eval
             mode without autograd, classifier loss only; the trunk on the whole batch at once
             (LTDET.DECOUPLED.TRUNK_CHUNK's default 0, as in every ltdet variant but the next).
  decoupled_chunked  the same with the trunk one image at a time (TRUNK_CHUNK 1): its
             activations no longer grow with the batch, at some cost in time.
  balms      DecoupledTrainStep with a MetaReweigher (meta batch from a second, class-balanced
             loader; torch.func look-ahead on the cached classifier features).
  dbm_bs, two_component, m2m  the other decoupled methods' steps, for their cost.
  original   a re-creation (in this file) of the official BALMS code's scheme: three full
             training-mode forward passes per iteration - (1) training batch with the classifier
             as differentiable fast weights (torch.func.functional_call on the whole model),
             look-ahead SGD step from the local gradient with create_graph; (2) meta batch
             through the looked-ahead classifier, meta loss back-propagated to the class weights,
             Adam step; (3) the real forward+backward with the updated weights, SGD step.

Weights: the decoupled regime starts from a trained base model, and that matters for the cost:
the stock step runs the mask head on every foreground proposal, and a randomly initialised RPN
finds few (on the synthetic set ~3 foreground RoIs per image against ~28 of the 32 allowed for
the trained base). ``--weights`` (default: ``make demo``'s base model when it exists) loads a
base checkpoint into every variant; without one the report says the weights are random.

Targets, as ratios measured in the same run: decoupled/stock time <= 0.6x and peak memory
<= 0.5x; decoupled_chunked/stock (TRUNK_CHUNK 1, which trades time for memory) peak memory
<= 0.5x; balms/decoupled time <= 2.2x; balms/original time <= 0.7x.

    python -m benchmarks.bench_decoupled [--device cpu|cuda] [--iters N] [--warmup W]
                                         [--batch B] [--lvis-scale] [--threads T] [--out DIR]
                                         [--variants stock decoupled ...]

Time: median over the timed rounds (after the warm-up rounds), torch.cuda.synchronize around
each step on GPU; ratios are the median of per-round ratios, so a load change on a shared
machine hits both sides alike. Memory: the variant's own resident state (weights, buffers,
optimiser state) plus the peak allocated above what was allocated when its step started (all
variants live on the device at once, so a raw peak would count the other variants' weights).
On GPU the peak is torch.cuda.max_memory_allocated over the timed rounds; on CPU, where torch
keeps no allocator statistics, it is the running sum of the allocation and free records of
torch.profiler (profile_memory=True) over three extra, untimed steps of each variant (the
max): tensors allocated through torch's CPU allocator (oneDNN's scratch buffers are not seen).
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import random
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
# ltdet registers its datasets relative to $DETECTRON2_DATASETS on import; like longtail.py and
# tools/demo.py, a relative value (or the default ./datasets) is seen from the repository root.
_data = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
os.environ["DETECTRON2_DATASETS"] = _data if os.path.isabs(_data) else str(ROOT / _data)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import SimpleTrainer  # noqa: E402
from detectron2.layers import cat  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

import ltdet  # noqa: E402,F401  (registers datasets and the LongTail ROI heads)
from benchmarks.bench_losses import machine_info  # noqa: E402  (one machine description)
from ltdet.config import add_ltdet_config  # noqa: E402
from ltdet.engine.decoupled import DecoupledTrainStep, freeze_except  # noqa: E402
from ltdet.engine.trainer import Trainer  # noqa: E402
from ltdet.modeling.m2m import M2mTranslator  # noqa: E402
from ltdet.modeling.meta_reweigher import MetaReweigher, proposal_weights  # noqa: E402

BASE_CONFIG = ROOT / "configs/synthetic/base_softmax_rfs.yaml"
DECOUPLED_CONFIG = ROOT / "configs/synthetic/decoupled/balanced_softmax.yaml"
M2M_CONFIG = ROOT / "configs/synthetic/decoupled/m2m.yaml"
# --lvis-scale: these keys come from the LVIS recipe (Mask R-CNN R50-FPN, 800 px)
LVIS_CONFIG = ROOT / "configs/LVISv1/base_softmax_rfs_R50_FPN.yaml"
LVIS_SCALE_KEYS = (
    "MODEL.RESNETS.DEPTH",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "MODEL.FPN.OUT_CHANNELS",
    "MODEL.ANCHOR_GENERATOR.SIZES",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "MODEL.ROI_MASK_HEAD.NUM_CONV",
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    "INPUT.MAX_SIZE_TRAIN",
    "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST",
)
DATA_DIR = Path(os.path.expanduser(os.environ["DETECTRON2_DATASETS"])) / "ltdet_synthetic"
CLASSIFIER = "roi_heads.box_predictor.cls_score"
VARIANTS = (
    "stock",
    "decoupled",
    "decoupled_chunked",
    "balms",
    "original",
    "dbm_bs",
    "two_component",
    "m2m",
)
DESCRIPTION = {
    "stock": "detectron2 SimpleTrainer step, full forward, only cls_score trainable",
    "decoupled": "ltdet DecoupledTrainStep, balanced_softmax",
    "decoupled_chunked": "as decoupled, the frozen trunk one image at a time (TRUNK_CHUNK 1)",
    "balms": "ltdet DecoupledTrainStep + MetaReweigher",
    "dbm_bs": "ltdet DecoupledTrainStep, DBM-BS on a cosine classifier",
    "two_component": "ltdet DecoupledTrainStep, two-component weights (Jamal et al.)",
    "m2m": "ltdet DecoupledTrainStep, balanced_softmax + M2m feature translation",
    "original": "original BALMS scheme: 3 full training forwards per step",
}
# (numerator, denominator, time target, memory target); None = reported, no target.
COMPARISONS = [
    ("decoupled", "stock", 0.6, 0.5),
    ("decoupled_chunked", "stock", None, 0.5),  # trades time for memory: a memory target only
    ("balms", "decoupled", 2.2, None),
    ("balms", "original", 0.7, None),
    ("dbm_bs", "decoupled", None, None),
    ("two_component", "decoupled", None, None),
    ("m2m", "decoupled", None, None),
    ("original", "stock", None, None),
]
WARMUP = 2
CPU_MEMORY_STEPS = 3  # profiled steps per variant for the CPU peak memory (max over them)


# --------------------------------------------------------------------------- configs and data
def _load_cfg(path: Path, device: str, batch: int, lvis_scale: bool):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""  # --weights loads a base model later; the default is random init
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = batch
    if lvis_scale:
        # The network and input sizes of the LVIS recipe, on the synthetic set (28 classes)
        # upscaled to its test size; the synthetic config's normalisation is kept.
        lvis = get_cfg()
        add_ltdet_config(lvis)
        lvis.merge_from_file(str(LVIS_CONFIG))
        for key in LVIS_SCALE_KEYS:
            *parents, leaf = key.split(".")
            src, dst = lvis, cfg
            for p in parents:
                src, dst = src[p], dst[p]
            dst[leaf] = src[leaf]
        # one training size (the test size, no scale jitter): every variant times the same input
        cfg.INPUT.MIN_SIZE_TRAIN = (lvis.INPUT.MIN_SIZE_TEST,)
    cfg.freeze()
    return cfg


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fetch(loader, n: int) -> List[List[dict]]:
    return list(islice(iter(loader), n))


# --------------------------------------------------------------------------- the variants
class _Variant:
    """One training scheme with its own model copy, optimiser(s) and data streams."""

    name: str
    model: nn.Module

    def step(self) -> None:
        raise NotImplementedError

    def state_tensors(self) -> List[torch.Tensor]:
        """Resident tensors owned by this variant (for the memory accounting)."""
        ts = list(self.model.parameters()) + list(self.model.buffers())
        for opt in self.optimizers():
            for st in opt.state.values():
                ts += [v for v in st.values() if torch.is_tensor(v)]
        return ts

    def optimizers(self) -> List[torch.optim.Optimizer]:
        return []


class StockStep(_Variant):
    name = "stock"

    def __init__(self, model, optimizer, batches):
        self.model = model
        self.trainer = SimpleTrainer(model, batches, optimizer)  # puts the model in train mode

    def step(self):
        self.trainer.run_step()
        self.trainer.iter += 1

    def optimizers(self):
        return [self.trainer.optimizer]


class DecoupledStep(_Variant):
    def __init__(
        self,
        name,
        model,
        optimizer,
        batches,
        reweigher=None,
        meta_optimizer=None,
        meta_batches=None,
        meta_loss="plain",
        two_component=None,
        m2m=None,
        trunk_chunk=0,
    ):
        self.name = name
        self.model = model
        self.reweigher = reweigher
        self.trainer = DecoupledTrainStep(
            model,
            batches,
            optimizer,
            reweigher=reweigher,
            meta_loader=meta_batches,
            meta_optimizer=meta_optimizer,
            meta_loss=meta_loss,
            meta_interval=1,
            two_component=two_component,
            m2m=m2m,
            trunk_chunk=trunk_chunk,
        )

    def step(self):
        self.trainer.run_step()
        self.trainer.iter += 1

    def optimizers(self):
        return [o for o in (self.trainer.optimizer, self.trainer.meta_optimizer) if o is not None]

    def state_tensors(self):
        extra = list(self.reweigher.parameters()) if self.reweigher is not None else []
        return super().state_tensors() + extra


class _TrainingForward(nn.Module):
    """GeneralizedRCNN's training forward rebuilt from the model's parts, so that the sampled
    proposals' gt classes are at hand for the per-proposal weights: preprocess, backbone, RPN
    (with its losses), label_and_sample_proposals, box pooler + head + predictor (classification
    and box-regression losses), mask head loss. Returns every loss, like ``model(batch)``.

    ``class_logits`` given: the classification loss is the head's own (balanced_softmax) with
    ``proposal_weights(class_logits, gt)``; ``meta_loss`` given ("same" or "plain", as
    LTDET.META.LOSS): the head's own or its plain loss, unweighted (meta).
    A module wrapping the model, so ``functional_call`` can swap any model parameter.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        batched_inputs,
        class_logits: Optional[torch.Tensor] = None,
        meta_loss: Optional[str] = None,
    ) -> Dict[str, torch.Tensor]:
        model = self.model
        heads = model.roi_heads
        predictor = heads.box_predictor
        images = model.preprocess_image(batched_inputs)
        gt = [x["instances"].to(model.device) for x in batched_inputs]
        features = model.backbone(images.tensor)
        proposals, losses = model.proposal_generator(images, features, gt)
        losses = dict(losses)
        proposals = heads.label_and_sample_proposals(proposals, gt)

        x = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
        x = heads.box_head(x)
        scores, deltas = predictor(x)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        if meta_loss is None:
            weights = (
                proposal_weights(class_logits, gt_classes) if class_logits is not None else None
            )
            loss_cls = predictor.classification_loss(scores, gt_classes, weights)
        elif meta_loss == "same":
            loss_cls = predictor.classification_loss(scores, gt_classes)
        else:
            loss_cls = predictor.plain_loss(scores, gt_classes)
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
            dim=0,
        )
        loss_box_reg = predictor.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes)
        losses["loss_cls"] = loss_cls * predictor.loss_weight.get("loss_cls", 1.0)
        losses["loss_box_reg"] = loss_box_reg * predictor.loss_weight.get("loss_box_reg", 1.0)
        losses.update(heads._forward_mask(features, proposals))
        return losses


class OriginalBalmsStep(_Variant):
    """The official BALMS code's Meta Reweigher iteration: three full training-mode forward
    passes of the model, look-ahead from the local (not all-reduced) gradient."""

    name = "original"

    def __init__(
        self, model, optimizer, batches, reweigher, meta_optimizer, meta_batches, meta_loss: str
    ):
        self.model = model
        self.model.train()
        self.forward_module = _TrainingForward(model)
        self.optimizer = optimizer
        self.reweigher = reweigher
        self.meta_optimizer = meta_optimizer
        self.meta_loss = meta_loss
        self._data = iter(batches)
        self._meta = iter(meta_batches)
        self.classifier = dict(model.named_parameters())
        self.classifier = {k: p for k, p in self.classifier.items() if p.requires_grad}
        assert sorted(self.classifier) == [f"{CLASSIFIER}.bias", f"{CLASSIFIER}.weight"], sorted(
            self.classifier
        )

    def _lookahead(self, fast: Dict[str, torch.Tensor], grads: Dict[str, torch.Tensor]):
        """One differentiable torch-SGD step (the optimiser's lr, momentum buffer, dampening,
        nesterov, weight decay) of the fast weights; graph kept through ``grads``."""
        new = {}
        for k, real in self.classifier.items():
            group = next(
                g for g in self.optimizer.param_groups if any(q is real for q in g["params"])
            )
            lr, mom = group["lr"], group.get("momentum", 0.0)
            wd, damp = group.get("weight_decay", 0.0), group.get("dampening", 0.0)
            d_p = grads[k] + wd * fast[k]
            if mom:
                buf = self.optimizer.state.get(real, {}).get("momentum_buffer")
                buf = d_p if buf is None else mom * buf + (1 - damp) * d_p
                d_p = d_p + mom * buf if group.get("nesterov", False) else buf
            new[k] = fast[k] - lr * d_p
        return new

    def step(self):
        self.model.train()
        start = time.perf_counter()
        data = next(self._data)
        meta = next(self._meta)
        data_time = time.perf_counter() - start
        w = self.reweigher.logits
        prefixed = {f"model.{k}": k for k in self.classifier}

        # (1) training batch, classifier as differentiable fast weights, weighted loss.
        fast = {k: p.detach().clone().requires_grad_() for k, p in self.classifier.items()}
        losses = functional_call(
            self.forward_module, {pk: fast[k] for pk, k in prefixed.items()}, (data, w)
        )
        keys = list(fast)
        grads = torch.autograd.grad(
            sum(losses.values()), [fast[k] for k in keys], create_graph=True
        )
        new = self._lookahead(fast, dict(zip(keys, grads)))  # local gradient (no all-reduce)

        # (2) meta batch through the looked-ahead classifier; meta gradient to the class weights.
        meta_losses = functional_call(
            self.forward_module,
            {pk: new[k] for pk, k in prefixed.items()},
            (meta, None, self.meta_loss),
        )
        (h,) = torch.autograd.grad(sum(meta_losses.values()), [w])
        self.meta_optimizer.zero_grad(set_to_none=True)
        w.grad = h
        self.meta_optimizer.step()

        # (3) the real step with the updated weights.
        losses = self.forward_module(data, w.detach())
        total = sum(losses.values())
        self.optimizer.zero_grad()
        total.backward()
        SimpleTrainer.write_metrics(losses, data_time)
        self.optimizer.step()

    def optimizers(self):
        return [self.optimizer, self.meta_optimizer]

    def state_tensors(self):
        return super().state_tensors() + list(self.reweigher.parameters())


DEMO_BASE = ROOT / "output/demo/base_softmax_rfs/model_final.pth"


def resolve_weights(weights: str, lvis_scale: bool) -> str:
    """ "auto": make demo's synthetic base model if it exists (not at --lvis-scale, a different
    architecture), else random init; "none": random init; otherwise a checkpoint path."""
    if weights == "none":
        return ""
    if weights == "auto":
        return str(DEMO_BASE) if DEMO_BASE.is_file() and not lvis_scale else ""
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"--weights {weights}: no such checkpoint (a base model of the "
            "synthetic config, e.g. make demo's "
            f"{DEMO_BASE})"
        )
    return weights


def build_variants(
    device: str,
    batch: int,
    iters: int,
    warmup: int,
    lvis_scale: bool = False,
    seed: int = 0,
    weights: str = "",
) -> Dict[str, _Variant]:
    if not (DATA_DIR / "GENERATOR.json").is_file():
        from ltdet.data.synthetic import generate

        generate(str(DATA_DIR))
    base_cfg = _load_cfg(BASE_CONFIG, device, batch, lvis_scale)
    dec_cfg = _load_cfg(DECOUPLED_CONFIG, device, batch, lvis_scale)
    stock_cfg = base_cfg.clone()
    stock_cfg.defrost()
    stock_cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"  # detectron2's own heads and predictor
    stock_cfg.freeze()

    # The same batches for every variant, fetched once (repeat-factor training sampler; the meta
    # batches from ltdet's class-balanced meta loader).
    _seed(seed)
    n = warmup + iters
    batches = _fetch(Trainer.build_train_loader(base_cfg, seed=seed), n)
    meta_batches = _fetch(Trainer.build_meta_loader(dec_cfg, seed=seed + 1), n)

    _seed(seed)
    reference = build_model(dec_cfg)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=False)
        reference.load_state_dict(state.get("model", state))  # strict: a base model of this config
    init = copy.deepcopy(reference.state_dict())
    del reference

    def model_from(cfg):
        m = build_model(cfg)
        m.load_state_dict(init)  # strict: every variant starts from the same weights
        return m

    variants: Dict[str, _Variant] = {}
    # (a) stock: plain detectron2, every parameter but the classifier frozen by hand.
    m = model_from(stock_cfg)
    for name, p in m.named_parameters():
        p.requires_grad_(name.startswith(CLASSIFIER + "."))
    variants["stock"] = StockStep(m, build_optimizer(stock_cfg, m), batches)

    # (b) decoupled.
    m = model_from(dec_cfg)
    freeze_except(m, dec_cfg.LTDET.DECOUPLED.TRAINABLE)
    chunk = dec_cfg.LTDET.DECOUPLED.TRUNK_CHUNK  # every ltdet variant runs the config default
    variants["decoupled"] = DecoupledStep(
        "decoupled", m, build_optimizer(dec_cfg, m), batches, trunk_chunk=chunk
    )
    m = model_from(dec_cfg)
    freeze_except(m, dec_cfg.LTDET.DECOUPLED.TRAINABLE)
    variants["decoupled_chunked"] = DecoupledStep(
        "decoupled_chunked", m, build_optimizer(dec_cfg, m), batches, trunk_chunk=1
    )

    # (c) BALMS, ltdet's implementation.
    m = model_from(dec_cfg)
    freeze_except(m, dec_cfg.LTDET.DECOUPLED.TRAINABLE)
    rw = MetaReweigher(dec_cfg.MODEL.ROI_HEADS.NUM_CLASSES).to(m.device)
    variants["balms"] = DecoupledStep(
        "balms",
        m,
        build_optimizer(dec_cfg, m),
        batches,
        reweigher=rw,
        meta_optimizer=Trainer.build_meta_optimizer(dec_cfg, rw),
        meta_batches=meta_batches,
        meta_loss=dec_cfg.LTDET.META.LOSS,
        trunk_chunk=chunk,
    )

    # (d) the original scheme, same losses and weighting as (c).
    m = model_from(dec_cfg)
    freeze_except(m, dec_cfg.LTDET.DECOUPLED.TRAINABLE)
    rw = MetaReweigher(dec_cfg.MODEL.ROI_HEADS.NUM_CLASSES).to(m.device)
    variants["original"] = OriginalBalmsStep(
        m,
        build_optimizer(dec_cfg, m),
        batches,
        rw,
        Trainer.build_meta_optimizer(dec_cfg, rw),
        meta_batches,
        dec_cfg.LTDET.META.LOSS,
    )

    # (e) DBM-BS: cosine classifier (weight only) initialised from the same classifier weights.
    dbm_cfg = dec_cfg.clone()
    dbm_cfg.defrost()
    dbm_cfg.LTDET.LOSS.NAME = "dbm_bs"
    dbm_cfg.freeze()
    m = build_model(dbm_cfg)
    m.load_state_dict(init, strict=False)  # the cosine classifier has no bias
    freeze_except(m, dbm_cfg.LTDET.DECOUPLED.TRAINABLE)
    variants["dbm_bs"] = DecoupledStep(
        "dbm_bs", m, build_optimizer(dbm_cfg, m), batches, trunk_chunk=chunk
    )

    # (f) two-component weights: one development batch and one eps step per iteration.
    m = model_from(dec_cfg)
    freeze_except(m, dec_cfg.LTDET.DECOUPLED.TRAINABLE)
    cw = torch.ones(dec_cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    variants["two_component"] = DecoupledStep(
        "two_component",
        m,
        build_optimizer(dec_cfg, m),
        batches,
        meta_batches=meta_batches,
        two_component=(cw, 1000.0),
        trunk_chunk=chunk,
    )

    # (g) M2m: the synthetic recipe's translation settings on the Balanced Softmax step.
    m2m_cfg = _load_cfg(M2M_CONFIG, device, batch, lvis_scale)
    m2m_cfg.defrost()
    m2m_cfg.LTDET.LOSS.NAME = dec_cfg.LTDET.LOSS.NAME
    m2m_cfg.freeze()
    m = model_from(dec_cfg)
    freeze_except(m, dec_cfg.LTDET.DECOUPLED.TRAINABLE)
    translator = M2mTranslator(m2m_cfg).to(m.device)
    translator.init_generator(m.roi_heads.box_predictor.cls_score)
    variants["m2m"] = DecoupledStep(
        "m2m", m, build_optimizer(dec_cfg, m), batches, m2m=translator, trunk_chunk=chunk
    )

    for v in variants.values():
        trainable = sorted(k for k, p in v.model.named_parameters() if p.requires_grad)
        expected = (
            [f"{CLASSIFIER}.weight"]
            if v.name == "dbm_bs"
            else [f"{CLASSIFIER}.bias", f"{CLASSIFIER}.weight"]
        )
        assert trainable == expected, (v.name, trainable)
    return variants


# --------------------------------------------------------------------------- measurement
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _bytes(tensors: List[torch.Tensor], device_type: str) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t.device.type != device_type:
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def cpu_step_peak(fn: Callable[[], object]) -> int:
    """Peak bytes held through torch's CPU allocator while ``fn()`` runs, above what was held
    when it started: the running sum of the profiler's allocation (+) and free (-) records in
    time order. Frees of blocks allocated before the call are not recorded by the profiler, so
    memory released that was allocated earlier never lowers the curve (a slight overestimate)."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError(
            "this torch's profiler exposes no kineto_results; CPU memory cannot "
            "be measured (run with --device cuda, or upgrade torch)"
        )
    records = sorted(
        (
            (e.start_ns(), e.nbytes())
            for e in results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        ),
        key=lambda r: r[0],
    )
    held = peak = 0
    for _, nbytes in records:
        held += nbytes
        peak = max(peak, held)
    return peak


def _ratio(num: List[float], den: List[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def measure(
    device: str,
    iters: int,
    batch: int,
    warmup: Optional[int] = None,
    lvis_scale: bool = False,
    seed: int = 0,
    variants: Sequence[str] = VARIANTS,
    weights: str = "",
):
    """Time and peak memory of one training step of each variant in ``variants``.

    Every round runs one step of each variant on the same batch, in an order rotated per round.
    Returns (one dict per comparison of ``COMPARISONS`` whose two sides were measured,
    per-variant numbers).
    """
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    warmup = WARMUP if warmup is None else warmup  # read at call time (tests lower it)
    cuda = device.startswith("cuda")
    names = [v for v in VARIANTS if v in variants]
    # Building every variant is cheap; only the selected ones run.
    built = build_variants(
        device, batch, iters + (0 if cuda else CPU_MEMORY_STEPS), warmup, lvis_scale, seed, weights
    )
    times: Dict[str, List[float]] = {k: [] for k in names}
    step_peak: Dict[str, int] = {k: 0 for k in names}
    with EventStorage(0) as storage:
        for r in range(warmup + iters):
            storage.iter = r
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                _sync(device)
                if cuda:
                    before = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                built[name].step()
                _sync(device)
                elapsed = time.perf_counter() - start
                if r >= warmup:
                    times[name].append(elapsed)
                    if cuda:
                        step_peak[name] = max(
                            step_peak[name], torch.cuda.max_memory_allocated() - before
                        )
        # CPU: a few more (untimed, profiled) steps each, on the next batches; the peak depends
        # on the batch (foreground proposals feed the stock step's mask head), so take the max.
        for k in range(0 if cuda else CPU_MEMORY_STEPS):
            storage.iter = warmup + iters + k
            for name in names:
                step_peak[name] = max(step_peak[name], cpu_step_peak(built[name].step))
    stats = {}
    for name in names:
        resident = _bytes(built[name].state_tensors(), "cuda" if cuda else "cpu")
        stats[name] = {
            "median_ms": 1e3 * statistics.median(times[name]),
            "min_ms": 1e3 * min(times[name]),
            "times_ms": [round(1e3 * t, 1) for t in times[name]],
            "peak_mb": (resident + step_peak[name]) / 2**20,
            "step_mb": step_peak[name] / 2**20,
        }

    rows = []
    for num, den, t_target, m_target in COMPARISONS:
        if num not in stats or den not in stats:
            continue
        t_ratio = _ratio(times[num], times[den])
        m_ratio = stats[num]["peak_mb"] / stats[den]["peak_mb"]
        rows.append(
            {
                "comparison": f"{num} / {den}",
                "num_ms": round(stats[num]["median_ms"], 2),
                "den_ms": round(stats[den]["median_ms"], 2),
                "time_ratio": round(t_ratio, 3),
                "time_target": f"<= {t_target}" if t_target else "",
                "time_meets": ("yes" if t_ratio <= t_target else "no") if t_target else "",
                "num_peak_mb": round(stats[num]["peak_mb"], 1),
                "den_peak_mb": round(stats[den]["peak_mb"], 1),
                "mem_ratio": round(m_ratio, 3),
                "mem_target": f"<= {m_target}" if m_target else "",
                "mem_meets": ("yes" if m_ratio <= m_target else "no") if m_target else "",
            }
        )
    return rows, stats


def run(
    device: str,
    iters: int,
    batch: int,
    warmup: Optional[int] = None,
    lvis_scale: bool = False,
    seed: int = 0,
    variants: Sequence[str] = VARIANTS,
    weights: str = "",
) -> List[dict]:
    """One dict per comparison (time and memory ratios, with targets)."""
    return measure(device, iters, batch, warmup, lvis_scale, seed, variants, weights)[0]


# --------------------------------------------------------------------------- report


def weights_note(weights: str) -> str:
    if weights:
        return f"Weights: the base model `{os.path.relpath(weights, ROOT)}` in every variant."
    return (
        "Weights: random init (no base model given): the RPN finds few foreground proposals, so "
        "the stock step's mask head runs on few RoIs and its cost is understated."
    )


def to_markdown(
    rows: List[dict],
    stats: Dict[str, dict],
    device: str,
    iters: int,
    warmup: int,
    batch: int,
    lvis_scale: bool,
    info: Dict[str, str],
    weights: str = "",
) -> str:
    scale = (
        "ResNet-50 FPN (256 ch), 800 px short side, box head 1024, 512 RoIs/image"
        if lvis_scale
        else "synthetic config: ResNet-18 FPN (64 ch), 128 px, 128 RoIs/image"
    )
    cuda = device.startswith("cuda")
    lines = [
        f"# Decoupled training step cost ({device})",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
        f"Mask R-CNN, {scale}, 28 classes, {batch} images per batch; only "
        f"`{CLASSIFIER}` trainable in every variant; same initial weights and batches. "
        f"Median of {iters} interleaved rounds after {warmup} warm-up rounds; time ratio = median "
        "of per-round ratios. "
        + "Peak memory = the variant's resident state + peak allocated above it during its step"
        + (
            " (torch.cuda.max_memory_allocated)."
            if cuda
            else " (torch.profiler's CPU allocation records, max over 3 extra untimed steps)."
        ),
        "",
        weights_note(weights),
        "",
        "| variant | what | median ms | min ms | peak MB | of which step MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {DESCRIPTION[name]} | {s['median_ms']:.1f} | "
            f"{s['min_ms']:.1f} | {s['peak_mb']:.1f} | {s['step_mb']:.1f} |"
        )
    lines += [
        "",
        "Per-round times (ms): "
        + "; ".join(
            f"{name} {', '.join(f'{t:.0f}' for t in s['times_ms'])}" for name, s in stats.items()
        ),
    ]
    lines += [
        "",
        "| comparison | time ratio | target | meets | memory ratio | target | meets |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['comparison']} | {r['time_ratio']} | {r['time_target']} | "
            f"{r['time_meets']} | {r['mem_ratio']} | {r['mem_target']} | "
            f"{r['mem_meets']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--iters", type=int, default=None, help="timed rounds; default 10 cpu, 30 cuda"
    )
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument(
        "--batch", type=int, default=None, help="images per batch; default 4 cpu, 8 cuda"
    )
    parser.add_argument(
        "--lvis-scale",
        action="store_true",
        help="ResNet-50 FPN sizes and 800 px images (meant for GPU)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads; default 1 on cpu (on a shared machine more "
        "threads made steps swing 10x), torch's default on cuda; 0 = torch's",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        help="variants to run (default all); comparisons need both sides",
    )
    parser.add_argument(
        "--weights",
        default="auto",
        help="base model checkpoint; auto = make demo's output/demo/base_softmax_rfs"
        " if present, none = random init",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    cuda = args.device == "cuda"
    threads = args.threads if args.threads is not None else (0 if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda but torch.cuda.is_available() is False")
    iters = args.iters or (30 if cuda else 10)
    batch = args.batch or (8 if cuda else 4)
    if args.lvis_scale and not cuda:
        print("warning: --lvis-scale on CPU is very slow", file=sys.stderr)

    weights = resolve_weights(args.weights, args.lvis_scale)
    rows, stats = measure(
        args.device,
        iters,
        batch,
        warmup=args.warmup,
        lvis_scale=args.lvis_scale,
        variants=args.variants,
        weights=weights,
    )
    info = machine_info(args.device)
    table = to_markdown(
        rows, stats, args.device, iters, args.warmup, batch, args.lvis_scale, info, weights
    )
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"decoupled_{args.device}" + ("_lvis_scale" if args.lvis_scale else "")
    (out / f"{stem}.md").write_text(table)
    extra = {
        "batch": str(batch),
        "iters": str(iters),
        "warmup": str(args.warmup),
        "lvis_scale": str(args.lvis_scale),
        "weights": os.path.relpath(weights, ROOT) if weights else "random",
    }
    if not rows:  # e.g. --variants balms alone: timings in the markdown, no ratio to list
        (out / f"{stem}.csv").unlink(missing_ok=True)  # an older run's csv would not match
        print(f"wrote {out}/{stem}.md (no comparison among the chosen variants, so no .csv)")
        return
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], *extra, *info])
        writer.writeheader()
        writer.writerows({**row, **extra, **info} for row in rows)
    print(f"wrote {out}/{stem}.md and .csv")


if __name__ == "__main__":
    main()
