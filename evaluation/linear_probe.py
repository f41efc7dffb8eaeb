"""A linear probe on frozen image embeddings: multinomial logistic regression, as the CLIP paper
evaluates representations (L-BFGS on the full feature matrix, the L2 strength chosen on a held-out
fifth of the training features, then refit on all of them).

CLIP_benchmark fits the same model by AdamW over mini-batches with a weight-decay search; its numbers
differ from these by the optimiser's tolerance, so lp_* metrics are named as it names them but are
not claimed equal to its own.

Shapes: N = training images, M = test images, E = embedding size, C = classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmtrain.evaluation.clip_metrics import classification_metrics

L2_STRENGTHS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
HELD_OUT_FRACTION = 0.2
MAX_ITERATIONS = 200


def fit_logistic(features_NE: torch.Tensor, labels_N: torch.Tensor, num_classes: int, l2: float) -> torch.nn.Linear:
    torch.manual_seed(0)
    probe = torch.nn.Linear(features_NE.shape[1], num_classes).double()
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=MAX_ITERATIONS, line_search_fn="strong_wolfe")
    x, y = features_NE.double(), labels_N.long()

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


@torch.no_grad()
def _accuracy(probe: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probe(features.double()).argmax(dim=1) == labels).float().mean())


def linear_probe(
    train_NE: torch.Tensor,
    train_labels_N: torch.Tensor,
    test_ME: torch.Tensor,
    test_labels_M: torch.Tensor,
    num_classes: int,
) -> dict:
    """lp_acc1, lp_acc5, lp_mean_per_class_recall on the test features, and the L2 strength chosen."""
    if train_NE.shape[0] < 2 or test_ME.shape[0] == 0:
        raise ValueError("a linear probe needs training images (its train split) and test images")
    train_NE, test_ME = F.normalize(train_NE.float(), dim=-1), F.normalize(test_ME.float(), dim=-1)
    order = torch.randperm(train_NE.shape[0], generator=torch.Generator().manual_seed(0))
    held = order[: max(1, int(len(order) * HELD_OUT_FRACTION))]
    fit = order[len(held) :]
    scores = {
        l2: _accuracy(
            fit_logistic(train_NE[fit], train_labels_N[fit], num_classes, l2), train_NE[held], train_labels_N[held]
        )
        for l2 in L2_STRENGTHS
    }
    best = max(L2_STRENGTHS, key=lambda l2: (scores[l2], l2))  # ties: the stronger regularisation
    probe = fit_logistic(train_NE, train_labels_N, num_classes, best)
    with torch.no_grad():
        metrics = classification_metrics(probe(test_ME.double()).float(), test_labels_M.long())
    return {**{f"lp_{name}": value for name, value in metrics.items()}, "lp_l2": best}
