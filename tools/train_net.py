#!/usr/bin/env python
"""Train and evaluate ltdet models: detectron2's train_net with ltdet's config, heads and
evaluator. Examples:

  python tools/train_net.py --config-file configs/synthetic/base_softmax_rfs.yaml
  python tools/train_net.py --num-gpus 8 --config-file configs/LVISv1/base_softmax_rfs_R50_FPN.yaml
  python tools/train_net.py --eval-only --config-file ... MODEL.WEIGHTS output/model_final.pth
"""
import ltdet  # noqa: F401  (compat fixes, dataset and head registration: before detectron2)

# isort: split
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ltdet.checkpoint import EVAL_ONLY, LongTailCheckpointer
from ltdet.config import add_ltdet_config, merge_config
from ltdet.config_rules import check_config
from ltdet.engine import Trainer, launch


def setup(args):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    merge_config(cfg, args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # detectron2 sets up its own loggers only; ltdet's INFO lines (frozen parameters, the
    # development split, EQL's suppressed classes) go to the console and log.txt as in its projects
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ltdet")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_config(cfg, training=False)
        model = Trainer.build_model(cfg)
        # every layer from the checkpoint: no AP of a freshly initialised classifier
        LongTailCheckpointer(model, save_dir=cfg.OUTPUT_DIR, require_complete=True,
                             purpose=EVAL_ONLY).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
