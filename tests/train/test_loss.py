import math

import torch

from mtft_ray.train.loss import PrototypeHead, prototype_logits
from mtft_ray.train.multitask import shard_steps, task_order


def test_logits_against_hand_computation():
    # 2-way, 2-shot, 1-query in 2-D
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 1.0]])  # class 0: x-axis, class 1: y-axis
    q = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    logits = prototype_logits(torch.cat([s, q]), n_way=2, n_shot=2, n_query=1, temperature=10.0)
    # centroids (2,0) and (0,1.5) normalise to e_x and e_y
    expected = 10.0 * torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, -1.0]])
    assert torch.allclose(logits, expected, atol=1e-6)


def test_loss_is_cross_entropy_of_queries_and_temperature_learns():
    torch.manual_seed(0)
    head = PrototypeHead(init_temperature=10.0)
    feats = torch.randn(3 * (1 + 2), 4, requires_grad=True)
    loss, acc = head(feats, n_way=3, n_shot=1, n_query=2)
    logits = prototype_logits(feats, 3, 1, 2, 10.0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    manual = -torch.log_softmax(logits, 1)[torch.arange(6), labels].mean()
    assert torch.allclose(loss, manual)
    assert acc == (logits.argmax(1) == labels).float().mean().item()
    loss.backward()
    assert head.temperature.grad is not None and head.temperature.grad.abs() > 0
    assert feats.grad.abs().sum() > 0


def test_task_order_and_sharding():
    order = task_order(10, epoch=1, seed=0)
    assert sorted(order) == list(range(10))
    assert not (order == task_order(10, epoch=2, seed=0)).all()
    one = shard_steps(order, tasks_per_step=2, world_size=1)
    two = [shard_steps(order, 1, world_size=2, rank=r) for r in (0, 1)]
    # same global steps: 2 tasks per step in both layouts, and the ranks' tasks are disjoint
    assert len(one) == len(two[0]) == len(two[1]) == 5
    for s in range(5):
        assert sorted(one[s]) == sorted([*two[0][s], *two[1][s]])
