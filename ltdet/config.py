"""ltdet's config keys. Call ``add_ltdet_config(cfg)`` on a detectron2 ``get_cfg()`` first."""

from detectron2.config import CfgNode as CN


def add_ltdet_config(cfg: CN) -> None:
    """Add every ltdet key, with the default of the paper it comes from."""
    cfg.LTDET = CN()

    # Datasets given without code (ltdet.data.user_datasets): registered by tools/train_net.py
    # before training or evaluation, usable by name in DATASETS.TRAIN / DATASETS.TEST.
    cfg.LTDET.DATASETS = CN()
    # Entries "NAME:JSON:IMAGE_ROOT" (train_net's --dataset NAME JSON IMAGE_ROOT adds one). An
    # LVIS-format json is used as it is; a plain COCO-format json gets the LVIS fields derived
    # (docs/CUSTOM_DATASETS.md) into OUTPUT_DIR/datasets/NAME.json, which lvis-api evaluates.
    cfg.LTDET.DATASETS.REGISTER = []
    # Frequency groups derived for COCO-format jsons from the training sets' image counts:
    # rare <= RARE_MAX_IMAGES, common <= COMMON_MAX_IMAGES, frequent above (LVIS: 10 and 100).
    cfg.LTDET.DATASETS.RARE_MAX_IMAGES = 10
    cfg.LTDET.DATASETS.COMMON_MAX_IMAGES = 100

    # Per-class training statistics consumed by the balanced losses and samplers, computed from
    # the annotations of DATASETS.TRAIN, summed over its sets (ltdet.data.class_stats); with
    # LTDET.TWO_COMPONENT (ENABLED or HOLD_OUT_DEV), of the images left after the development
    # split.
    cfg.LTDET.CLASS_STATS = CN()
    # "image_count" (images containing the class; the original BALMS code) or "instance_count",
    # for the softmax-family losses (Balanced Softmax, DBM), M2m and the two-component w_y
    # (Jamal et al.'s n_y); the sigmoid-family losses always use image counts (fractions of the
    # annotated training images).
    cfg.LTDET.CLASS_STATS.SOURCE = "image_count"
    # Floor of every count: counts below FLOOR are raised to it, so classes with no training image
    # get FLOOR (and with FLOOR > 1 so do the rarest classes). 0 = no floor: classes without an
    # image are an error for the losses whose statistics need a count (log 0 in priors, margins,
    # federated weights); EQL accepts them. (Not in the papers; must be >= 0.) The class-balanced
    # meta sampler cannot draw a class without images whatever FLOOR is.
    cfg.LTDET.CLASS_STATS.FLOOR = 0.0

    # Box classification loss of the LongTail ROI heads (ltdet.modeling.losses).
    cfg.LTDET.LOSS = CN()
    # softmax | sigmoid | balanced_softmax | balanced_sigmoid | eql | federated | dbm | dbm_bs |
    # dbm_cb (the DBM losses put a cosine classifier in the head; LTDET.DBM below).
    cfg.LTDET.LOSS.NAME = "softmax"
    # EQL frequency threshold lambda on image frequency: image count / training images with
    # annotations (Tan et al. 2020: 1.76e-3 in the paper; the EQL code's LVIS v0.5 config 1.77e-3,
    # i.e. at most 100 of the 56,740 annotated training images: exactly the rare and common groups,
    # where 1.76e-3 = 99.9 images keeps the three common classes with 100). Dataset-dependent: the
    # head logs how many classes it suppresses and warns at none.
    cfg.LTDET.LOSS.EQL_LAMBDA = 1.77e-3
    # Federated loss: number of classes per batch (Zhou et al. 2021: 50 of LVIS's 1203). At or
    # above the class count every class is used and the loss is plain sigmoid (the head warns) ...
    cfg.LTDET.LOSS.FED_NUM_CLASSES = 50
    # ... sampled with probability image_count ** FED_POWER (Zhou et al.: 0.5).
    cfg.LTDET.LOSS.FED_POWER = 0.5
    # Sigmoid heads: classifier bias initialised to -log((1-p)/p) (BALMS code, focal-loss style).
    cfg.LTDET.LOSS.SIGMOID_PRIOR_PROB = 0.001
    # Sigmoid-family heads loading a softmax-family checkpoint (K+1 logits, e.g. detectron2's
    # LVIS model zoo): True starts the K logits as each class's weights and bias minus the
    # background's (the softmax class-vs-background log-odds; ltdet.modeling.classifier_init);
    # False refuses such a checkpoint with an explained error. Not in the papers: ltdet's option.
    cfg.LTDET.LOSS.SIGMOID_FROM_SOFTMAX = False
    # Class-balanced "effective number" weights (1-beta)/(1-beta^n_y) of dbm_cb and of the
    # two-component w_y; < 0 means beta = (n-1)/n with n the sum of the per-class counts of
    # CLASS_STATS.SOURCE (Jamal et al. 2020: the number of training samples; with image counts an
    # image with several classes counts once per class). The DBM paper leaves beta open; the DRW
    # code it builds on (Cao et al. 2019) uses 0.9999.
    cfg.LTDET.LOSS.CB_BETA = -1.0

    # DBM losses dbm / dbm_bs / dbm_cb (Son et al. 2025): cosine classifier with scale s,
    # class-wise margin m_C = K (n_y / n_min)^(-tau) and instance-wise margin on hard positives.
    cfg.LTDET.DBM = CN()
    cfg.LTDET.DBM.SCALE = 30.0  # paper: s = 30 (30-32 in its tables)
    cfg.LTDET.DBM.K = 0.1  # paper: K = 0.1 (0.1-0.3)
    cfg.LTDET.DBM.TAU = 1.0  # paper: tau = 1

    # Decoupled regime (BALMS supp. C.3): fine-tune only the box classifier of MODEL.WEIGHTS.
    cfg.LTDET.DECOUPLED = CN()
    cfg.LTDET.DECOUPLED.ENABLED = False
    # fnmatch patterns of the parameters that train; everything else is frozen (paper: the
    # class-score layer, "one fully connected layer"). Only class-score parameters may be chosen
    # (e.g. its weight alone): the decoupled step computes no other loss and no trunk gradient.
    cfg.LTDET.DECOUPLED.TRAINABLE = ["roi_heads.box_predictor.cls_score.*"]
    # Images per forward of the frozen trunk during fine-tuning; 0 = the whole per-GPU batch.
    # The trunk's activations are most of the step's memory: a small chunk keeps them
    # independent of the batch size, with the same features, for memory-short machines (step
    # time and memory measured in benchmarks/results/decoupled_*.md). Not in the paper (ltdet's
    # option); default 0.
    cfg.LTDET.DECOUPLED.TRUNK_CHUNK = 0

    # Meta Reweigher (BALMS supp. B.2): learnable per-class loss weights, bi-level optimisation
    # on a class-balanced meta batch. Needs LTDET.DECOUPLED.ENABLED.
    cfg.LTDET.META = CN()
    cfg.LTDET.META.ENABLED = False
    # Adam learning rate: the paper's 1e-3 (the original code used 1e-2).
    cfg.LTDET.META.LR = 1e-3
    # Adam betas: PyTorch's default (0.9, 0.999), as the original instance-segmentation code (the
    # BALMS paper's LVIS paragraph gives only the lr; (0.9, 0.99) is its CIFAR / ImageNet setting).
    cfg.LTDET.META.BETAS = (0.9, 0.999)
    # Meta loss on the class-balanced batch: "plain" (softmax/sigmoid, the paper: the meta set
    # is already balanced) or "same" (the head's own loss, what the original code effectively
    # used through an in-place logit edit).
    cfg.LTDET.META.LOSS = "plain"
    # A meta step every INTERVAL iterations (paper and code: every iteration).
    cfg.LTDET.META.INTERVAL = 1
    # Images per meta batch (all ranks), also the two-component development batch; 0 =
    # SOLVER.IMS_PER_BATCH. Not rescaled by SOLVER.REFERENCE_WORLD_SIZE.
    cfg.LTDET.META.IMS_PER_BATCH = 0
    # Log the class weights every LOG_PERIOD iterations (a csv and PNG are written at the end).
    cfg.LTDET.META.LOG_PERIOD = 20

    # Two-component weights w_y + eps_i (Jamal et al. 2020, Algorithm 1): class-balanced
    # effective-number weights (beta: LTDET.LOSS.CB_BETA) plus per-proposal weights meta-learned
    # on a class-balanced development split held out of the training images. Needs
    # LTDET.DECOUPLED.ENABLED; exclusive with LTDET.META.
    cfg.LTDET.TWO_COMPONENT = CN()
    cfg.LTDET.TWO_COMPONENT.ENABLED = False
    # Step size tau of the eps update (Algorithm 1, line 13). The paper does not report it; with
    # mean-reduced losses the eps gradient scales with lr / N, and tau = 1 gave mean |eps| ~ 1e-4
    # on the synthetic set (w_y ~ 1), so the default makes eps a visible correction.
    cfg.LTDET.TWO_COMPONENT.EPS_LR = 1000.0
    # Development images per class. The paper holds out 10 per class from CIFAR-LT's training
    # set (ImageNet-LT and Places-LT take 10 from their validation sets), 5 from iNat 2017's and 2
    # from iNat 2018's; 2 follows iNat 2018, the naturally long-tailed set held out of training.
    cfg.LTDET.TWO_COMPONENT.DEV_IMAGES_PER_CLASS = 2
    # Classes with a single training image cannot be held out; True leaves them out of the
    # development set instead of failing.
    cfg.LTDET.TWO_COMPONENT.ALLOW_UNCOVERED = False
    # Leave the development split out of this run's training images without the two-component
    # weights, in any regime. Set it in the base model's config for Jamal et al.'s Algorithm 1
    # (lines 1-5 pre-train on the training set minus D), so that the base model never sees the
    # images whose loss later drives eps. The split depends on the training images (DATASETS.TRAIN,
    # DATALOADER.FILTER_EMPTY_ANNOTATIONS) and DEV_IMAGES_PER_CLASS (ALLOW_UNCOVERED only decides
    # whether an uncovered class is an error): with those equal, both stages hold out the same
    # images (each logs a digest of the held-out ids to compare).
    # False (the shipped recipes): the base model is the one instance-balanced base that every
    # decoupled method shares, and it has seen D.
    cfg.LTDET.TWO_COMPONENT.HOLD_OUT_DEV = False

    # M2m (Kim et al. 2020) in feature space: translate frequent-class foreground RoI features
    # into rarer classes against the frozen base classifier g and add the accepted ones to the
    # classifier's batch (ltdet.modeling.m2m). Needs LTDET.DECOUPLED.ENABLED and a softmax-family
    # loss (Eq. 2 uses g's softmax cross entropy).
    cfg.LTDET.M2M = CN()
    cfg.LTDET.M2M.ENABLED = False
    # Translation attempts per training image (ours: the per-iteration budget).
    cfg.LTDET.M2M.ATTEMPTS_PER_IMAGE = 64
    # Seed rejection: class k0 for target k is kept with probability 1 - BETA^((N_k0 - N_k)^+)
    # (M2m code default 0.999; counts from LTDET.CLASS_STATS.SOURCE).
    cfg.LTDET.M2M.BETA = 0.999
    # Accept x* only if g's softmax probability of the target is >= GAMMA (M2m code: 0.99).
    cfg.LTDET.M2M.GAMMA = 0.99
    # lambda of Eq. 2, weight of the classifier-in-training's seed-class logit (M2m code: 0.5).
    cfg.LTDET.M2M.LAMBDA = 0.5
    # Gradient steps (M2m code: 10) of length STEP_SIZE * ||x0|| (relative: ours; the original
    # stepped 0.1 in [0, 1] pixel space, a far smaller fraction of an image's norm than 0.1 is of
    # a feature's) from a random start at relative radius INIT_NOISE.
    cfg.LTDET.M2M.NUM_STEPS = 10
    cfg.LTDET.M2M.STEP_SIZE = 0.1
    cfg.LTDET.M2M.INIT_NOISE = 0.05

    # Evaluation extras written next to detectron2's metrics.
    cfg.LTDET.EVAL = CN()
    # Per-class AP table (csv) and a PNG of per-class AP against training frequency.
    cfg.LTDET.EVAL.PER_CLASS = True
    # LVIS AP backend: "fast" (ltdet's NumPy implementation of lvis-api's protocol, same numbers
    # to 1e-9, several times faster and leaner) or "lvis-api" (lvis-api's LVISEval, the reference)
    cfg.LTDET.EVAL.BACKEND = "fast"


def merge_config(cfg: CN, config_file: str = "", opts=()) -> CN:
    """Merge a config file and command-line opts, turning yacs' bare KeyError for an unknown key
    into an error that names the key and the likely fix."""
    try:
        if config_file:
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:  # yacs: KeyError from files, assert from lists
        if "Non-existent" not in str(e):
            raise
        where = f"{config_file} or the command line" if config_file else "the command line"
        raise KeyError(
            f"unknown config key in {where}: {e}. Check the spelling against "
            "detectron2's defaults and ltdet/config.py (add_ltdet_config must run before merging)"
        ) from None
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    return cfg


def resolve_device(device: str) -> str:
    """MODEL.DEVICE "auto" (the synthetic recipes): "cuda" when torch sees a GPU, else "cpu".
    Any other value (e.g. "cpu" or "cuda" on the command line, to force one) is kept."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
