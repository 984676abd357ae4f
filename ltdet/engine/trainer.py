"""detectron2's DefaultTrainer with ltdet's evaluator, checks and CPU-distributed support."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import weakref
from typing import Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine import hooks as d2_hooks
from detectron2.engine.defaults import AMPTrainer
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import LongTailCheckpointer, config_fingerprint, last_checkpoint
from ..compat import set_data_loader_iter
from ..config_rules import check_config
from ..data.class_stats import config_class_counts, training_class_stats
from ..data.dev_split import holds_out_dev, split_for_config
from ..data.lvis_format import shared_loads
from ..data.positioned import build_positioned_train_loader
from ..data.samplers import class_balanced_repeat_factors
from ..evaluation import LongTailLVISEvaluator
from ..evaluation.lvis_evaluation import LVIS_MAX_DETS
from ..modeling.losses import effective_number_weights
from ..modeling.m2m import M2mTranslator
from ..modeling.meta_reweigher import MetaReweigher
from . import rng_state
from .decoupled import DecoupledTrainStep, freeze_except
from .divergence import LossGrowthHook, TrainingDiverged
from .hooks import MetaWeightsHook


def _all_train_dicts(cfg: CfgNode):
    return get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )


def _train_dicts(cfg: CfgNode):
    """Training images; with two-component weights or TWO_COMPONENT.HOLD_OUT_DEV, minus the
    held-out development split."""
    dicts = _all_train_dicts(cfg)
    if holds_out_dev(cfg):
        train, dev = split_for_config(cfg, dicts)
        # the digest lets a user check that the base model and the fine-tuning held out the same
        ids = ",".join(str(dicts[i]["image_id"]) for i in dev)
        logging.getLogger(__name__).info(
            "Development split: %d of %d training images held out (image ids sha1 %s)",
            len(dev),
            len(dicts),
            hashlib.sha1(ids.encode()).hexdigest()[:12],
        )
        dicts = [dicts[i] for i in train]
    return dicts


def _dev_dicts(cfg: CfgNode):
    dicts = _all_train_dicts(cfg)
    return [dicts[i] for i in split_for_config(cfg, dicts)[1]]


def _primed(iterator):
    """Start a data iterator now (torch's DataLoader draws its worker base seed from the global
    RNG when it starts); the first batch is kept and yielded first."""
    first = next(iterator)

    def gen():
        yield first
        yield from iterator

    return gen()


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """detectron2's create_ddp_model, but CPU modules get ``device_ids=None`` (DDP requires it)."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    return DistributedDataParallel(
        model, device_ids=[comm.get_local_rank()] if on_cuda else None, **kwargs
    )


class Trainer(DefaultTrainer):
    """DefaultTrainer plus: config checks, DDP on CPU (gloo), and the decoupled regime with the
    optional Meta Reweigher (LTDET.DECOUPLED / LTDET.META)."""

    def __init__(self, cfg: CfgNode):
        with shared_loads():  # each dataset json parsed once while the loaders are built
            self._build(cfg)
        # Start the data streams only now: worker processes fork without the shared dicts.
        self._prime_data()

    def _build(self, cfg: CfgNode) -> None:
        # DefaultTrainer.__init__'s construction, with the ltdet additions.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_config(cfg)
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        decoupled = cfg.LTDET.DECOUPLED.ENABLED
        self.reweigher = self.m2m = None
        model = self.build_model(cfg)
        if decoupled:
            trainable = freeze_except(model, cfg.LTDET.DECOUPLED.TRAINABLE)
            logging.getLogger(__name__).info("Decoupled regime: training only %s", trainable)
        optimizer = self.build_optimizer(cfg, model)  # detectron2 skips frozen parameters
        # Sampler seeds are drawn once (from cfg.SEED via default_setup) and checkpointed.
        self.data_seeds = [comm.shared_random_seed(), comm.shared_random_seed()]
        data_loader = self.build_train_loader(cfg, seed=self.data_seeds[0])
        extra = {}
        if decoupled:
            if cfg.LTDET.META.ENABLED:
                self.reweigher = MetaReweigher(cfg.MODEL.ROI_HEADS.NUM_CLASSES).to(model.device)
                extra["meta_reweigher"] = self.reweigher
            if cfg.LTDET.M2M.ENABLED:
                self.m2m = self.build_m2m(cfg, model)
                extra["m2m"] = self.m2m
            self._trainer = self.build_decoupled_step(cfg, model, (), optimizer)
        else:
            model = create_ddp_model(model, broadcast_buffers=False)
            self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
                model, (), optimizer
            )
        # The loader is handed over only now: detectron2 0.6's step starts an iterator in its
        # __init__ (a torch DataLoader's draws from the global RNG, and its workers), later
        # versions lazily; _prime_data starts the one stream at the same point on both.
        self._trainer.data_loader = data_loader
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Decoupled fine-tuning must start from a complete base model of this architecture; a
        # resume, from a checkpoint of this recipe (the fingerprint).
        self.checkpointer = LongTailCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            trainer=weakref.proxy(self),
            require_complete=decoupled,
            sigmoid_from_softmax=cfg.LTDET.LOSS.SIGMOID_FROM_SOFTMAX,
            fingerprint=config_fingerprint(cfg),
            **extra,
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @staticmethod
    def build_m2m(cfg, model) -> M2mTranslator:
        """The M2m translator, with g shaped like the classifier (its weights are the base
        model's, set in ``resume_or_load``, or a checkpoint's)."""
        m2m = M2mTranslator(cfg)
        m2m.build_generator(model.roi_heads.box_predictor.cls_score)
        return m2m.to(model.device)

    def build_decoupled_step(self, cfg, model, data_loader, optimizer) -> DecoupledTrainStep:
        """The decoupled training step. The Trainer passes ``data_loader=()`` and sets the
        step's ``data_loader`` afterwards (no version of detectron2 then starts an iterator
        before ``_prime_data``)."""
        chunk = cfg.LTDET.DECOUPLED.TRUNK_CHUNK
        if cfg.LTDET.TWO_COMPONENT.ENABLED:
            # w_y from the images left for training, counted as the losses count (SOURCE, FLOOR)
            counts = config_class_counts(cfg, "two-component class counts")
            beta = cfg.LTDET.LOSS.CB_BETA if cfg.LTDET.LOSS.CB_BETA >= 0 else None
            class_weights = effective_number_weights(counts, beta).float()
            return DecoupledTrainStep(
                model,
                data_loader,
                optimizer,
                meta_loss="plain",
                meta_loader=self.build_meta_loader(cfg, seed=self.data_seeds[1]),
                two_component=(class_weights, cfg.LTDET.TWO_COMPONENT.EPS_LR),
                m2m=self.m2m,
                trunk_chunk=chunk,
            )
        if self.reweigher is None:
            return DecoupledTrainStep(
                model, data_loader, optimizer, m2m=self.m2m, trunk_chunk=chunk
            )
        return DecoupledTrainStep(
            model,
            data_loader,
            optimizer,
            reweigher=self.reweigher,
            meta_loader=self.build_meta_loader(cfg, seed=self.data_seeds[1]),
            meta_optimizer=self.build_meta_optimizer(cfg, self.reweigher),
            meta_loss=cfg.LTDET.META.LOSS,
            meta_interval=cfg.LTDET.META.INTERVAL,
            m2m=self.m2m,
            trunk_chunk=chunk,
        )

    @staticmethod
    def build_meta_optimizer(cfg, reweigher: MetaReweigher) -> torch.optim.Optimizer:
        """Adam on the Meta Reweigher's class-weight logits (BALMS supp. B.2), LTDET.META.LR and
        BETAS, no weight decay."""
        return torch.optim.Adam(
            reweigher.parameters(),
            lr=cfg.LTDET.META.LR,
            betas=tuple(cfg.LTDET.META.BETAS),
            weight_decay=0.0,
        )

    @classmethod
    def build_train_loader(cls, cfg, skip: int = 0, seed: Optional[int] = None):
        """detectron2's train loader and sampler, with the sampler's ``seed`` explicit, this
        rank's first ``skip`` indices dropped and each sample's augmentation seeded by its
        position (ltdet.data.positioned): an exact --resume with any number of workers."""
        dicts = _train_dicts(cfg)
        name = cfg.DATALOADER.SAMPLER_TRAIN
        seed = comm.shared_random_seed() if seed is None else seed
        if name == "TrainingSampler":
            sampler = TrainingSampler(len(dicts), seed=seed)
        elif name == "RepeatFactorTrainingSampler":
            # detectron2 after v0.6 has DATALOADER.REPEAT_SQRT (False: factors t/f, not
            # sqrt(t/f)); v0.6 has neither the key nor the argument and always takes the root
            sqrt = {"sqrt": cfg.DATALOADER.REPEAT_SQRT} if "REPEAT_SQRT" in cfg.DATALOADER else {}
            factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dicts, cfg.DATALOADER.REPEAT_THRESHOLD, **sqrt
            )
            sampler = RepeatFactorTrainingSampler(factors, seed=seed)
        else:
            raise ValueError(
                f"DATALOADER.SAMPLER_TRAIN {name!r} is not supported by ltdet's "
                "trainer; use TrainingSampler or RepeatFactorTrainingSampler"
            )
        return build_positioned_train_loader(cfg, dicts, sampler, seed, skip)

    @classmethod
    def build_meta_loader(cls, cfg, skip: int = 0, seed: Optional[int] = None):
        """Class-balanced batches (detectron2's repeat-factor sampler with factors max_c 1/f(c))
        from the training set, or from the development split with two-component weights."""
        dev = cfg.LTDET.TWO_COMPONENT.ENABLED
        dicts = _dev_dicts(cfg) if dev else _train_dicts(cfg)
        factors = class_balanced_repeat_factors(
            dicts,
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            allow_missing=dev and cfg.LTDET.TWO_COMPONENT.ALLOW_UNCOVERED,
        )
        seed = comm.shared_random_seed() if seed is None else seed
        sampler = RepeatFactorTrainingSampler(factors, seed=seed)
        return build_positioned_train_loader(
            cfg, dicts, sampler, seed, skip, total_batch_size=cls._meta_batch(cfg)
        )

    @staticmethod
    def _meta_batch(cfg) -> int:
        return cfg.LTDET.META.IMS_PER_BATCH or cfg.SOLVER.IMS_PER_BATCH

    def resume_or_load(self, resume: bool = True, *, changed_config_ok: bool = False):
        """detectron2's resume_or_load; a resume refuses a checkpoint of another recipe
        (ltdet.checkpoint.FINGERPRINT_KEYS) unless ``changed_config_ok`` (--resume-changed-config).
        """
        self.checkpointer.changed_config_ok = changed_config_ok
        if comm.get_world_size() == 1:
            super().resume_or_load(resume)
        else:
            # Each rank finds its own last checkpoint; a decoupled model is not DDP-wrapped, so
            # nothing would align ranks that found different ones (they would train apart, then
            # hang when their iteration counts part). A rank's loading error is shared too: the
            # others would otherwise wait in the gather until the process-group timeout.
            error = None
            try:
                super().resume_or_load(resume)
            except Exception as e:  # re-raised below, on every rank
                error = e
            gathered = comm.all_gather(
                (self.start_iter, None if error is None else f"{type(error).__name__}: {error}")
            )
            if error is not None:
                raise error
            failed = [(rank, msg) for rank, (_, msg) in enumerate(gathered) if msg]
            if failed:
                raise RuntimeError(
                    f"rank {failed[0][0]} could not load its checkpoint: {failed[0][1]}"
                )
            starts = [start for start, _ in gathered]
            if len(set(starts)) > 1:
                raise RuntimeError(
                    f"ranks resume at different iterations {starts}: their OUTPUT_DIRs hold "
                    f"different checkpoints ({self.cfg.OUTPUT_DIR} on rank {comm.get_rank()}). "
                    "Give every machine the same checkpoints (a shared OUTPUT_DIR) before --resume"
                )
        if self.m2m is not None and not bool(self.m2m.initialized):
            # Fresh fine-tuning: g is the base model's classifier, frozen from now on.
            self.m2m.init_generator(self._trainer.predictor.cls_score)
        if self.start_iter > 0:  # continue the data streams where the saved run stopped
            # Creating data-loader iterators draws from the torch RNG just restored from the
            # checkpoint; put it back afterwards so ROI sampling continues exactly.
            rng = torch.get_rng_state()
            world, cfg, step = comm.get_world_size(), self.cfg, self._trainer
            with shared_loads():
                step.data_loader = self.build_train_loader(
                    cfg,
                    skip=self.start_iter * cfg.SOLVER.IMS_PER_BATCH // world,
                    seed=self.data_seeds[0],
                )
                if getattr(step, "meta_steps_per_iter", 0):
                    meta_steps = (
                        self.start_iter
                        if step.two_component is not None
                        else -(-self.start_iter // step.meta_interval)
                    )
                    step.set_meta_loader(
                        self.build_meta_loader(
                            cfg,
                            skip=meta_steps * self._meta_batch(cfg) // world,
                            seed=self.data_seeds[1],
                        )
                    )
            self._prime_data()
            torch.set_rng_state(rng)

    def _prime_data(self) -> None:
        # Start the data streams at construction, so that their RNG draws happen before the
        # state a checkpoint saves (or before the restored one is put back): resume is exact.
        step = self._trainer
        set_data_loader_iter(step, _primed(iter(step.data_loader)))
        if getattr(step, "_meta_iter", None) is not None:
            step._meta_iter = _primed(step._meta_iter)

    def state_dict(self):
        # detectron2 0.6's DefaultTrainer saves neither the optimizer nor the RNG state; both
        # are needed for --resume to continue exactly (ROI sampling and augmentation draw from
        # the global RNGs). TrainerBase's, not DefaultTrainer's: later detectron2 added its own
        # (saving and loading "_trainer" unconditionally), and ltdet's checkpoints must be the
        # same on every version.
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        ret["data_seeds"] = list(self.data_seeds)
        ret["rng"] = rng_state.capture()
        hook = getattr(self, "_rng_hook", None)
        if hook is not None and hook.gathered_at == self.iter:  # several processes
            ret["rng_per_rank"] = hook.gathered
        return ret

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        self.data_seeds = state_dict.get("data_seeds", self.data_seeds)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        rng_state.restore_from_checkpoint(state_dict)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        meta = MetadataCatalog.get(dataset_name)
        if meta.get("evaluator_type") != "lvis":
            raise ValueError(
                f"ltdet evaluates LVIS-format datasets; {dataset_name} has "
                f"evaluator_type {meta.get('evaluator_type')!r}"
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        os.makedirs(output_folder, exist_ok=True)
        if cfg.TEST.DETECTIONS_PER_IMAGE > LVIS_MAX_DETS:
            logging.getLogger(__name__).warning(
                "TEST.DETECTIONS_PER_IMAGE = %d, but LVIS AP counts only each image's top %d "
                "detections (the LVIS protocol, as detectron2 evaluates it): the rest are written "
                "to the results json and not scored",
                cfg.TEST.DETECTIONS_PER_IMAGE,
                LVIS_MAX_DETS,
            )
        return LongTailLVISEvaluator(
            dataset_name,
            ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
            output_dir=output_folder,
            max_dets_per_image=LVIS_MAX_DETS,
            train_dataset=cfg.DATASETS.TRAIN or None,
            per_class=cfg.LTDET.EVAL.PER_CLASS,
            backend=cfg.LTDET.EVAL.BACKEND,
            # the images trained on (without a held-out development split); read only when needed
            train_stats=functools.partial(training_class_stats, cfg),
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, leaving the training process's RNG streams as they were:
        building and iterating the test loader draws from torch's RNG, so evaluating every
        TEST.EVAL_PERIOD iterations would change the proposals sampled afterwards (and a resume
        from a checkpoint taken at an evaluation would not be exact)."""
        state = rng_state.capture()
        try:
            return super().test(cfg, model, evaluators)
        finally:
            rng_state.restore(state)

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:  # detectron2's "Loss became infinite or NaN"
            lr = max(g["lr"] for g in self._trainer.optimizer.param_groups)
            raise TrainingDiverged(
                self.iter,
                lr,
                self.cfg.SOLVER.BASE_LR,
                self.cfg.OUTPUT_DIR,
                last_checkpoint(self.cfg.OUTPUT_DIR),
                str(e),
            ) from e

    def train(self):
        """Train; return the last evaluation results (detectron2 0.6 returns them only when
        TEST.EXPECTED_RESULTS is set)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    def build_hooks(self):
        hooks = super().build_hooks()
        self._rng_hook = None
        if comm.get_world_size() > 1:
            # every rank's RNG state into the checkpoint; right before the (rank 0) checkpointer
            self._rng_hook = rng_state.GatherRngHook(self.cfg.SOLVER.CHECKPOINT_PERIOD)
            at = next(
                i
                for i, h in enumerate(hooks)
                if isinstance(h, (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook))
            )
            hooks.insert(at, self._rng_hook)
        hooks.insert(-1, LossGrowthHook())  # warns while a loss grows towards NaN
        if getattr(self, "reweigher", None) is not None:
            # before the writers (last in the list), so its scalars are written with the step's
            hooks.insert(
                -1,
                MetaWeightsHook(
                    self.reweigher,
                    training_class_stats(self.cfg),
                    self.cfg.OUTPUT_DIR,
                    self.cfg.LTDET.META.LOG_PERIOD,
                ),
            )
        return hooks

    def build_writers(self):
        writers = [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]
        try:  # tensorboard is optional
            from detectron2.utils.events import TensorboardXWriter

            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        except ImportError:
            pass
        return writers
