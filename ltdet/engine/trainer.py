"""detectron2's DefaultTrainer with ltdet's evaluator, checks and CPU-distributed support."""
from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import AMPTrainer
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import LongTailCheckpointer
from ..data import class_stats
from ..evaluation import LongTailLVISEvaluator


def check_config(cfg: CfgNode) -> None:
    """Fail early, with the fix, on a config that does not match its datasets."""
    train = cfg.DATASETS.TRAIN[0]
    stats = class_stats(train)  # raises for unregistered names and broken/missing files
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != stats.num_classes:
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES = {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset {train} "
            f"has {stats.num_classes} classes; set MODEL.ROI_HEADS.NUM_CLASSES {stats.num_classes}"
        )
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        if meta.get("evaluator_type") == "lvis" and meta.get("thing_classes") is None:
            class_stats(name)  # loads it: fills its class list
        n = len(MetadataCatalog.get(name).get("thing_classes", []))
        if n and n != stats.num_classes:
            raise ValueError(f"test set {name} has {n} classes, training set {train} has "
                             f"{stats.num_classes}: they must share one category list")


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """detectron2's create_ddp_model, but CPU modules get ``device_ids=None`` (DDP requires it)."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    return DistributedDataParallel(model, device_ids=[comm.get_local_rank()] if on_cuda else None,
                                   **kwargs)


class Trainer(DefaultTrainer):
    def __init__(self, cfg: CfgNode):
        # Same construction as DefaultTrainer.__init__, with our DDP wrapper and config checks.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_config(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = self.build_train_step(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = LongTailCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_step(cls, cfg, model, data_loader, optimizer):
        return (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        meta = MetadataCatalog.get(dataset_name)
        if meta.get("evaluator_type") != "lvis":
            raise ValueError(f"ltdet evaluates LVIS-format datasets; {dataset_name} has "
                             f"evaluator_type {meta.get('evaluator_type')!r}")
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        os.makedirs(output_folder, exist_ok=True)
        return LongTailLVISEvaluator(
            dataset_name,
            ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
            output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            train_dataset=cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None,
            per_class=cfg.LTDET.EVAL.PER_CLASS,
        )

    def build_writers(self):
        writers = [CommonMetricPrinter(self.max_iter),
                   JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))]
        try:  # tensorboard is optional
            from detectron2.utils.events import TensorboardXWriter

            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        except ImportError:
            pass
        return writers
