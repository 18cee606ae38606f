"""Medical forensic retrieval module (MFRM): a few-shot feature bank queried by affinity.

The bank holds, per entry, a key (the L2-normalised *adapted* visual feature of a labelled image),
a value (its one-hot label, columns = [real, fake]) and the name of the generator it came from.
A query feature f (L2-normalised, N×D) is scored as

    A      = exp(−α · (1 − f·Fᵀ))          affinity to every key            (paper's α: sharpness)
    logits = β · A·L  +  s · f·W′ᵀ          retrieval + classifier logits    (paper's β: residual weight)

with F the keys (M×D), L the values (M×K), W′ the classifier weights (the adapted text embeddings
of DSKI, or the linear head's rows), s the logit scale used in training. Defaults α = 0.1,
β = 10 as stated in the DSKI paper. **Naming:** Tip-Adapter (Zhang et al. 2022), where this
cache model comes from, uses the *reversed* names — its β is the sharpness inside the exponent
and its α the weight of the cache logits — so the DSKI α corresponds to Tip-Adapter's β and vice
versa.

``per_class`` (DSKI's ``bank_balance``, on by default with n = ``bank_shots``): each class
column of A·L is replaced by n × (mean affinity over that class's m_c entries), i.e. multiplied by
n / m_c. For a bank of exactly n real + n fake entries — the paper's setting — this is the formula
above unchanged. Once samples of a new generator are added to one class it keeps the retrieval
term from turning into a class-count prior: with the plain sum every added fake entry adds
≈ β·A ≥ β·e^(−2α) ≈ 8 logits towards "fake" for *every* query, real or not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.nn import functional as F

CLASSES = ("real", "fake")


def affinity(f: torch.Tensor, keys: torch.Tensor, alpha: float) -> torch.Tensor:
    """A = exp(−α(1 − f·Fᵀ)) for L2-normalised f (N×D) and keys F (M×D) → N×M."""
    return torch.exp(-alpha * (1.0 - f @ keys.T))


def retrieval_logits(f: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *, alpha: float, beta: float,
                     per_class: float | None = None) -> torch.Tensor:
    """β·A·L (N×K); with ``per_class = n`` each class column is n × its mean affinity (see module docstring)."""
    scores = affinity(f, keys, alpha) @ values
    if per_class is not None:
        counts = values.sum(0)
        scores = scores * torch.where(counts > 0, per_class / counts.clamp_min(1), torch.zeros_like(counts))
    return beta * scores


def mfrm_logits(f: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor | None, values: torch.Tensor | None, *,
                alpha: float, beta: float, logit_scale: float, per_class: float | None = None) -> torch.Tensor:
    """Final logits β·A·L + s·f·W′ᵀ (N×K); ``keys=None`` or an empty bank gives s·f·W′ᵀ alone.

    ``f``, ``weights`` (W′) and ``keys`` must already be L2-normalised along their last axis.
    """
    logits = logit_scale * f @ weights.T
    if keys is not None and values is not None and len(keys):
        logits = logits + retrieval_logits(f, keys.to(f.dtype), values.to(f.dtype), alpha=alpha, beta=beta,
                                           per_class=per_class)
    return logits


class FeatureBank:
    """Keys (M×D, L2-normalised), one-hot values (M×2) and a generator name per entry."""

    def __init__(self, dim: int, num_classes: int = 2):
        self.dim, self.num_classes = int(dim), int(num_classes)
        self.keys = torch.zeros(0, self.dim)
        self.values = torch.zeros(0, self.num_classes)
        self.generators: list[str] = []

    def __len__(self) -> int:
        return len(self.generators)

    def add(self, features: torch.Tensor, labels: Sequence[int] | torch.Tensor, generators: Sequence[str]) -> int:
        """Append entries (features are L2-normalised here); return the new size."""
        features = torch.as_tensor(features).detach().float().cpu()
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"bank features must be N×{self.dim}, got {tuple(features.shape)}")
        if not (len(features) == len(labels) == len(generators)):
            raise ValueError(f"{len(features)} features, {len(labels)} labels, {len(generators)} generator names")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes - 1} (0 real, 1 fake), got {labels.tolist()}")
        self.keys = torch.cat([self.keys, F.normalize(features, dim=1)])
        self.values = torch.cat([self.values, F.one_hot(labels, self.num_classes).float()])
        self.generators += [str(g) for g in generators]
        return len(self)

    def remove(self, generator: str) -> int:
        """Drop every entry of ``generator``; return how many were removed (KeyError if none)."""
        keep = [i for i, g in enumerate(self.generators) if g != generator]
        removed = len(self) - len(keep)
        if not removed:
            raise KeyError(f"no bank entries of generator {generator!r}; the bank holds: "
                           f"{', '.join(sorted(set(self.generators))) or '(nothing)'}")
        idx = torch.tensor(keep, dtype=torch.long)
        self.keys, self.values = self.keys[idx], self.values[idx]
        self.generators = [self.generators[i] for i in keep]
        return removed

    def clear(self) -> None:
        self.keys, self.values, self.generators = self.keys[:0], self.values[:0], []

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per generator and label, e.g. ``{"train:real": {"real": 16}}``."""
        out: dict[str, dict[str, int]] = {}
        labels = self.values.argmax(1).tolist() if len(self) else []
        for (gen, lab), n in Counter(zip(self.generators, labels)).items():
            out.setdefault(gen, {})[CLASSES[lab] if lab < len(CLASSES) else str(lab)] = n
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self, prefix: str = "bank.") -> dict[str, torch.Tensor]:
        if not len(self):
            return {}
        return {f"{prefix}keys": self.keys.contiguous(), f"{prefix}values": self.values.contiguous()}

    def load(self, tensors: dict[str, torch.Tensor], generators: Sequence[str], prefix: str = "bank.") -> None:
        """Restore from :meth:`state_dict` tensors and the generator names stored in config.json."""
        keys, values = tensors.get(f"{prefix}keys"), tensors.get(f"{prefix}values")
        if keys is None:
            if generators:
                raise ValueError(f"config lists {len(generators)} bank entries but the weights hold no bank")
            self.clear()
            return
        if values is None or len(keys) != len(values) or len(keys) != len(generators):
            raise ValueError(f"inconsistent bank: {len(keys)} keys, {0 if values is None else len(values)} values, "
                             f"{len(generators)} generator names")
        if keys.shape[1] != self.dim:
            raise ValueError(f"bank keys have dimension {keys.shape[1]}, the model's features {self.dim}")
        self.keys, self.values, self.generators = keys.float().clone(), values.float().clone(), list(generators)
