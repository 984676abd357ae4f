#!/usr/bin/env python
"""Train and evaluate ltdet models: detectron2's train_net with ltdet's config, heads and
evaluator. Examples:

  python tools/train_net.py --config-file configs/synthetic/base_softmax_rfs.yaml
  python tools/train_net.py --num-gpus 8 --config-file configs/LVISv1/base_softmax_rfs_R50_FPN.yaml
  python tools/train_net.py --eval-only --config-file ... MODEL.WEIGHTS output/model_final.pth
  python tools/train_net.py --config-file ... --dataset my_train train.json images/ \
      --dataset my_val val.json images/ DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)'
  python tools/train_net.py --resume --config-file <the run's config> OUTPUT_DIR <its folder>
"""

import contextlib
import os
import shlex

import ltdet  # noqa: F401  (compat fixes, dataset and head registration: before detectron2)

# isort: split
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ltdet.checkpoint import CHANGED_CONFIG_FLAG, EVAL_ONLY, LongTailCheckpointer, check_resume
from ltdet.config import add_ltdet_config, merge_config
from ltdet.config_rules import check_config
from ltdet.data.user_datasets import register_from_config
from ltdet.engine import Trainer, launch
from ltdet.engine.divergence import TrainingDiverged
from ltdet.file_io import restored_on_error


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register an LVIS- or COCO-format json as dataset NAME (repeatable)",
    )
    parser.add_argument(
        CHANGED_CONFIG_FLAG,
        action="store_true",
        help="with --resume: resume although the config differs from the "
        "checkpoint's in keys that define the model, loss or data (a "
        "deliberate change; docs/OUTPUTS_AND_RESUME.md)",
    )
    return parser


def setup(args):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    merge_config(cfg, args.config_file, args.opts)
    # getattr: args parsed by detectron2's own parser (no --dataset) work too
    cfg.LTDET.DATASETS.REGISTER += [":".join(d) for d in getattr(args, "dataset", [])]
    cfg.freeze()
    register_from_config(cfg)  # --dataset / LTDET.DATASETS.REGISTER; unknown names explained
    # Start-up checks first: default_setup replaces OUTPUT_DIR/config.yaml and the loggers append
    # to its log.txt, which must keep describing the previous run when the checks refuse.
    check_config(cfg, training=not args.eval_only)
    if args.resume and not args.eval_only:
        check_resume(cfg, changed_config_ok=getattr(args, "resume_changed_config", False))
    return cfg


def setup_outputs(cfg, args):
    default_setup(cfg, args)
    # detectron2 sets up its own loggers only; ltdet's INFO lines (frozen parameters, the
    # development split, EQL's suppressed classes) go to the console and log.txt as in its projects
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ltdet")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        setup_outputs(cfg, args)
        model = Trainer.build_model(cfg)
        # every layer from the checkpoint: no AP of a freshly initialised classifier
        # (a softmax checkpoint under a sigmoid-family config: converted as for training, so
        # --eval-only scores the fine-tune's starting point)
        LongTailCheckpointer(
            model,
            save_dir=cfg.OUTPUT_DIR,
            require_complete=True,
            purpose=EVAL_ONLY,
            sigmoid_from_softmax=cfg.LTDET.LOSS.SIGMOID_FROM_SOFTMAX,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    # Until the run has started, a refusal (the Trainer's checks, the checkpoint's) puts back the
    # config.yaml that default_setup replaced: the folder keeps saying how its checkpoint was made.
    config_yaml = os.path.join(cfg.OUTPUT_DIR, "config.yaml") if cfg.OUTPUT_DIR else None
    with restored_on_error(config_yaml) if config_yaml else contextlib.nullcontext():
        setup_outputs(cfg, args)
        trainer = Trainer(cfg)
        trainer.resume_or_load(
            resume=args.resume, changed_config_ok=getattr(args, "resume_changed_config", False)
        )
    try:
        return trainer.train()
    except TrainingDiverged as e:  # the same error, with this run's exact resume command
        raise e.with_command(resume_command(args)) from e


def resume_command(args) -> str:
    """The command that resumes this run: its arguments with --resume and without its own
    SOLVER.BASE_LR (the caller appends a lower one)."""
    opts = [str(o) for o in args.opts]
    if "SOLVER.BASE_LR" in opts:
        i = opts.index("SOLVER.BASE_LR")
        del opts[i : i + 2]
    argv = ["python", os.path.relpath(os.path.abspath(__file__)), "--config-file", args.config_file]
    for name, json_file, image_root in getattr(args, "dataset", []):
        argv += ["--dataset", name, json_file, image_root]
    if args.num_gpus > 1 or args.num_machines > 1:
        argv += [
            "--num-gpus",
            str(args.num_gpus),
            "--num-machines",
            str(args.num_machines),
            "--machine-rank",
            str(args.machine_rank),
            "--dist-url",
            args.dist_url,
        ]
    argv += (
        ["--resume"]
        + ([CHANGED_CONFIG_FLAG] if getattr(args, "resume_changed_config", False) else [])
        + opts
    )
    return " ".join(shlex.quote(a) for a in argv)


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
