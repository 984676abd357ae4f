"""Major-to-minor translation (M2m, Kim, Jeong & Shin, CVPR 2020) on frozen RoI features.

M2m over-samples minority classes with samples *translated* from majority ones: a seed x0 of
class k0 is moved towards a target class k by minimising (M2m Eq. 2)

    L(g; x, k) + lambda * f_k0(x)

with g a separately trained, frozen classifier (cross entropy towards k) and f the classifier in
training (its logit of the seed class, so the sample does not keep looking like k0 to f). The
result is rejected unless g is confident, softmax(g(x*))_k >= gamma (the original code's test;
equivalently L(g; x*, k) <= -log gamma), and a seed of class k0 for target k is accepted only
with probability 1 - beta^((N_k0 - N_k)^+): seeds barely larger than the target carry too little
majority information to be worth translating (M2m Sec. 3, rejection criterion).

In ltdet's decoupled regime the classifier trains on frozen box-head features, so M2m works in
feature space: seeds are the foreground proposals of the training batch, g is the base model's
classifier (frozen copy taken when fine-tuning starts and kept in checkpoints), f the classifier
being fine-tuned. What is ours (the paper translates images of a class-balanced batch):
- Targets: ``attempts_per_image`` per image, class k drawn with probability proportional to
  1 - N_k / N_max, the rate at which M2m replaces a balanced batch's class-k samples by
  translations (the largest class is never a target).
- Steps: normalised-gradient steps of ``step_size * ||x0||`` (relative, since feature scales vary
  between models; the original used absolute L2 steps of 0.1 on [0, 1] pixels) from a random
  start at relative radius ``init_noise``; features stay non-negative when the seeds are (box
  heads end in a ReLU), as the original clamps images to [0, 1].
- Accepted features are added to the classifier's batch with their target label, so the cost per
  iteration is bounded by the number of attempts times ``num_steps`` passes of two linear layers.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

__all__ = ["seed_accept_probs", "target_class_probs", "translate", "M2mTranslator"]

LogitFn = Callable[[Tensor], Tensor]


def seed_accept_probs(seed_counts: Tensor, target_counts: Tensor, beta: float) -> Tensor:
    """[T, S]: 1 - beta^((N_k0 - N_k)^+) for targets k (counts [T]) and seeds k0 (counts [S]),
    the probability of not rejecting seed class k0 for target k (M2m Sec. 3)."""
    delta = (seed_counts[None, :] - target_counts[:, None]).clamp_min(0)
    return 1.0 - torch.pow(torch.as_tensor(beta, dtype=delta.dtype), delta)


def target_class_probs(counts: Tensor) -> Tensor:
    """[K] probability of each class being a translation target, proportional to 1 - N_k/N_max."""
    p = 1.0 - counts / counts.max()
    if p.sum() <= 0:
        raise ValueError("M2m needs an imbalanced training set: every class has the same count")
    return p / p.sum()


def translate(
    x0: Tensor,
    targets: Tensor,
    seed_classes: Tensor,
    g_logits: LogitFn,
    f_logits: LogitFn,
    lam: float,
    step_size: float,
    num_steps: int,
    init_noise: float = 0.0,
) -> Tensor:
    """Minimise CE(g(x), k) + lam * f(x)_k0 (M2m Eq. 2) from ``x0`` [T, D] by ``num_steps``
    L2-normalised gradient steps of length ``step_size * ||x0_t||``. Returns x* (detached)."""
    scale = x0.norm(dim=1, keepdim=True)
    nonneg = bool((x0 >= 0).all())
    x = x0.detach()
    if init_noise > 0:
        noise = torch.randn_like(x)
        x = x + noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-12) * (init_noise * scale)
        if nonneg:
            x = x.clamp_min(0)
    for _ in range(num_steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            # Sums, not means: each sample's gradient is its own (the step is normalised).
            loss = F.cross_entropy(g_logits(x), targets, reduction="sum")
            if lam:
                loss = loss + lam * f_logits(x).gather(1, seed_classes[:, None]).sum()
            (grad,) = torch.autograd.grad(loss, x)
        step = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        x = x.detach() - step_size * scale * step
        if nonneg:
            x = x.clamp_min(0)
    return x.detach()


class M2mTranslator(nn.Module):
    """Adds M2m-translated foreground features to a decoupled classifier's batch.

    Holds g (a frozen copy of the classifier, set by ``init_generator`` from the base model and
    checkpointed as part of this module's state) and the per-class training counts.
    """

    @configurable
    def __init__(
        self,
        *,
        class_counts: Union[Tensor, Sequence[float]],
        attempts_per_image: int = 64,
        beta: float = 0.999,
        gamma: float = 0.99,
        lam: float = 0.5,
        step_size: float = 0.1,
        num_steps: int = 10,
        init_noise: float = 0.05,
    ):
        super().__init__()
        checks = [
            ("ATTEMPTS_PER_IMAGE", attempts_per_image >= 0, "must be >= 0"),
            ("BETA", 0.0 <= beta < 1.0, "must be in [0, 1)"),
            ("GAMMA", 0.0 <= gamma <= 1.0, "must be in [0, 1] (a probability threshold)"),
            ("LAMBDA", lam >= 0, "must be >= 0"),
            ("STEP_SIZE", step_size > 0, "must be > 0"),
            ("NUM_STEPS", num_steps >= 1, "must be >= 1"),
            ("INIT_NOISE", init_noise >= 0, "must be >= 0"),
        ]
        values = dict(
            ATTEMPTS_PER_IMAGE=attempts_per_image,
            BETA=beta,
            GAMMA=gamma,
            LAMBDA=lam,
            STEP_SIZE=step_size,
            NUM_STEPS=num_steps,
            INIT_NOISE=init_noise,
        )
        for key, ok, why in checks:
            if not ok:
                raise ValueError(f"LTDET.M2M.{key} {why}, got {values[key]}")
        counts = torch.as_tensor(class_counts, dtype=torch.float32)
        if counts.ndim != 1:
            raise ValueError(
                f"M2m class counts must be one count per class (shape [K]), got "
                f"shape {list(counts.shape)}"
            )
        if (counts <= 0).any():
            raise ValueError(
                "M2m needs a positive training count for every class "
                "(set LTDET.CLASS_STATS.FLOOR for classes without images)"
            )
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("target_probs", target_class_probs(counts), persistent=False)
        self.attempts_per_image = attempts_per_image
        self.beta, self.gamma, self.lam = beta, gamma, lam
        self.step_size, self.num_steps, self.init_noise = step_size, num_steps, init_noise
        self.g: Optional[nn.Module] = None
        # Set once g holds the base classifier; saved, so a resumed run keeps its g.
        self.register_buffer("initialized", torch.tensor(False))

    @classmethod
    def from_config(cls, cfg):
        from ..data.class_stats import config_class_counts

        c = cfg.LTDET.M2M
        counts = config_class_counts(cfg, "M2m class counts")
        return dict(
            class_counts=counts,
            attempts_per_image=c.ATTEMPTS_PER_IMAGE,
            beta=c.BETA,
            gamma=c.GAMMA,
            lam=c.LAMBDA,
            step_size=c.STEP_SIZE,
            num_steps=c.NUM_STEPS,
            init_noise=c.INIT_NOISE,
        )

    def build_generator(self, classifier: nn.Module) -> None:
        """Create g with the classifier's shape (weights are set by ``init_generator`` or by
        loading a checkpoint)."""
        outputs = getattr(classifier, "out_features", None)
        if outputs is not None and outputs != self.counts.numel() + 1:
            # Eq. 2 needs g's softmax over the K classes + background: a shorter count vector
            # would silently treat the last classes' proposals as background.
            raise ValueError(
                f"M2m has {self.counts.numel()} class counts but the classifier scores {outputs} "
                f"columns; it needs K + 1 (K classes and background), so {outputs - 1} counts. "
                "Check MODEL.ROI_HEADS.NUM_CLASSES against the training set's categories"
            )
        self.g = copy.deepcopy(classifier)
        for p in self.g.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def init_generator(self, classifier: nn.Module) -> None:
        """g := the classifier's current (base model) weights."""
        if self.g is None:
            self.build_generator(classifier)
        self.g.load_state_dict(classifier.state_dict())
        self.initialized.fill_(True)

    def forward(
        self,
        x: Tensor,
        gt_classes: Tensor,
        num_images: int,
        f_logits: LogitFn,
        logit_scale: float = 1.0,
    ) -> Tuple[Tensor, Tensor, Dict[str, float]]:
        """Translated features [A, D] and their target classes [A] for a batch of box-head
        features ``x`` [N, D] with ``gt_classes`` [N] (K = background); ``f_logits`` gives the
        classifier-in-training's class logits. Draws from the global torch RNG."""
        if self.g is None or not bool(self.initialized):
            raise RuntimeError(
                "M2mTranslator.init_generator(classifier) must be called with the "
                "base model's classifier before training"
            )
        num_classes = self.counts.numel()
        fg = torch.nonzero(gt_classes < num_classes).squeeze(1)
        attempts = self.attempts_per_image * num_images
        empty = (x.new_zeros(0, x.shape[1]), gt_classes.new_zeros(0))
        stats = {"m2m_attempts": float(attempts), "m2m_accepted": 0.0}
        if attempts == 0 or fg.numel() == 0:
            return (*empty, stats)
        counts = self.counts.to(x.device)
        targets = torch.multinomial(self.target_probs.to(x.device), attempts, replacement=True)
        seed_cls = gt_classes[fg]
        p = seed_accept_probs(counts[seed_cls], counts[targets], self.beta)  # [T, F]
        has_seed = p.sum(1) > 0
        targets, p = targets[has_seed], p[has_seed]
        if targets.numel() == 0:
            return (*empty, stats)
        pick = torch.multinomial(p, 1).squeeze(1)  # seed chosen with probability ~ acceptance
        p_pick = p.gather(1, pick[:, None]).squeeze(1)
        # The Bernoulli rejection does not depend on x*, so draw it first and translate only
        # the survivors (same distribution as the original's translate-then-reject).
        keep = torch.bernoulli(p_pick).bool()
        stats["m2m_seed_pass"] = float(keep.sum())
        targets, seeds = targets[keep], fg[pick[keep]]
        if targets.numel() == 0:
            return (*empty, stats)

        def g_logits(z):
            return logit_scale * self.g(z)

        x_new = translate(
            x[seeds],
            targets,
            gt_classes[seeds],
            g_logits,
            f_logits,
            self.lam,
            self.step_size,
            self.num_steps,
            self.init_noise,
        )
        with torch.no_grad():
            prob = F.softmax(g_logits(x_new), dim=1).gather(1, targets[:, None]).squeeze(1)
        ok = prob >= self.gamma
        stats["m2m_accepted"] = float(ok.sum())
        stats["m2m_target_prob"] = float(prob.mean())
        return x_new[ok], targets[ok], stats
