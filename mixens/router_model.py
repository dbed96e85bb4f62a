"""The learned router's classifier: from the running member's state, which member should write the next token.

Features of one step of the running member: its last hidden state at the newest position, the top
probability and the entropy of its next-token distribution. The classifier is a logistic regression
(or, with hidden units, a one-hidden-layer MLP) over standardised features; its classes are the
ensemble's members in order. It is trained by `python -m mixens.train_router` and stored as one
torch file holding only tensors and plain values (loaded with weights_only=True).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mixens.errors import ConfigError

FORMAT = "mixens-router/1"


def step_features(hidden: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """[B, H + 2] on the CPU: hidden state, top probability, entropy (nats) of a distribution [B, V]."""
    probs = probs.float()
    top = probs.max(dim=-1).values
    entropy = torch.special.entr(probs).sum(dim=-1)  # 0 * log 0 counts as 0
    return torch.cat([hidden.float().cpu(), top[:, None].cpu(), entropy[:, None].cpu()], dim=1)


class RouterClassifier(torch.nn.Module):
    def __init__(self, n_features: int, n_members: int, hidden_units: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        if hidden_units > 0:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(n_features, hidden_units), torch.nn.ReLU(), torch.nn.Linear(hidden_units, n_members)
            )
        else:
            self.net = torch.nn.Linear(n_features, n_members)
        self.n_features, self.n_members, self.hidden_units = n_features, n_members, hidden_units

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.scale)

    @torch.no_grad()
    def member_probs(self, features: torch.Tensor) -> torch.Tensor:
        """[B, n_members]: the probability that each member is the better one for this step."""
        return torch.softmax(self(features.float()), dim=-1)


@dataclass
class TrainedRouter:
    classifier: RouterClassifier
    members: list[str]  # member names at training time, in class order
    designated: str  # the member whose features the classifier reads
    info: dict = field(default_factory=dict)  # how it was trained (data, steps, accuracy)

    @property
    def hidden_size(self) -> int:
        return self.classifier.n_features - 2


def train_classifier(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_members: int,
    *,
    hidden_units: int = 0,
    epochs: int = 500,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> RouterClassifier:
    """Full-batch Adam on cross-entropy; deterministic for a seed. labels[k] is the better member of step k."""
    if features.shape[0] != labels.shape[0] or features.shape[0] == 0:
        raise ValueError(f"need as many labels as feature rows (> 0), got {features.shape[0]} and {labels.shape[0]}")
    torch.manual_seed(seed)
    features = features.float()
    classifier = RouterClassifier(features.shape[1], n_members, hidden_units)
    classifier.mean.copy_(features.mean(dim=0))
    classifier.scale.copy_(features.std(dim=0, unbiased=False).clamp_min(1e-6))  # constant features stay finite
    optimizer = torch.optim.Adam(classifier.parameters(), lr=learning_rate, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = loss_fn(classifier(features), labels.long())
        loss.backward()
        optimizer.step()
    return classifier.eval()


def save_router(path: str | Path, router: TrainedRouter) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = router.classifier
    payload = {
        "format": FORMAT,
        "state_dict": c.state_dict(),
        "n_features": c.n_features,
        "n_members": c.n_members,
        "hidden_units": c.hidden_units,
        "members": list(router.members),
        "designated": router.designated,
        "info": router.info,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a half-written file never takes the name
    return path


def load_router(path: str | Path) -> TrainedRouter:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"router_path '{path}' does not exist; train a router with `python -m mixens.train_router`.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean "not a router file"
        raise ConfigError(f"router_path '{path}' is not a mixens router file ({err}).") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"router_path '{path}' is not a mixens router file (expected format {FORMAT}).")
    classifier = RouterClassifier(payload["n_features"], payload["n_members"], payload["hidden_units"])
    classifier.load_state_dict(payload["state_dict"])
    return TrainedRouter(classifier.eval(), payload["members"], payload["designated"], payload.get("info", {}))
