"""Lesson 10 (training) against float64 hand computations and PyTorch's own optimiser."""

from __future__ import annotations

import copy
import math

import torch

from .helpers import check_close

LESSON = 10


def _loss_by_hand(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> float:
    """-1/n sum over (b, t) of log softmax(logits[b, t])[ids[b, t + 1]], in float64, targets that are real only."""
    total, n = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask is not None and mask[b, t + 1] == 0:
                continue
            row = logits[b, t].double()
            total -= float(row[ids[b, t + 1]] - torch.logsumexp(row, 0))
            n += 1
    return total / n


def test_lm_loss_shift(impl, gen):
    """没有 padding：T-1 个预测上 -log p(第 t+1 个 token | 位置 t) 的平均（用 float64 手算对照）"""
    logits = torch.randn(2, 6, 11, generator=gen) * 2
    ids = torch.randint(0, 11, (2, 6), generator=gen)
    got = impl.lm_loss(logits, ids)
    expected = _loss_by_hand(logits, ids, None)
    check_close(got, torch.tensor(expected), "位置 t 的 logits 预测 input_ids[:, t + 1]：logits[:, :-1] 对 input_ids[:, 1:]")


def test_lm_loss_ignores_padding(impl, gen):
    """左侧、右侧 padding 的行：目标是 padding 的预测不计入"""
    logits = torch.randn(3, 5, 7, generator=gen) * 2
    ids = torch.randint(0, 7, (3, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = impl.lm_loss(logits, ids, mask)
    check_close(got, torch.tensor(_loss_by_hand(logits, ids, mask)),
                "attention_mask[:, 1:] 为 0 的目标不计入（ignore_index=-100），平均只在计入的项上取")


def test_lm_loss_backpropagates(impl, gen):
    """损失是带梯度的张量：在计入的位置上 d loss / d logits = (softmax - one_hot) / n"""
    logits = (torch.randn(1, 4, 5, generator=gen)).requires_grad_()
    ids = torch.tensor([[1, 2, 3, 4]])
    loss = impl.lm_loss(logits, ids)
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise AssertionError("返回可反向传播的标量张量（不要 .item()，不要在 no_grad 里算）")
    loss.backward()
    expected = torch.zeros(1, 4, 5)
    expected[0, :3] = (logits[0, :3].detach().softmax(-1) - torch.eye(5)[[2, 3, 4]]) / 3
    check_close(logits.grad, expected, "最后一个位置没有下一个 token，不参与损失，它的梯度为 0", atol=1e-6)


def _tiny_model(seed: int):
    """transformers' LlamaForCausalLM: any model with `model(ids, attention_mask=mask).logits` can be trained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, initializer_range=0.2))


def _step_by_hand(model, ids, mask, max_norm: float, lr: float) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    logits = model(ids, attention_mask=mask).logits
    predictions, targets = logits[:, :-1].reshape(-1, 23), ids[:, 1:].reshape(-1)
    keep = mask[:, 1:].reshape(-1).bool()
    loss = torch.nn.functional.cross_entropy(predictions[keep], targets[keep])
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "every parameter of the oracle model takes part in the loss"
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * scale * p.grad
    return float(loss)


def test_train_step_matches_a_step_by_hand(impl, gen):
    """一步带梯度裁剪的 SGD：loss 和更新后的权重都与手算的相同"""
    model = _tiny_model(0)
    by_hand = copy.deepcopy(model)
    ids = torch.randint(0, 23, (2, 6), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    for p in model.parameters():                      # stale gradients a correct step must clear first
        p.grad = torch.ones_like(p)
    loss = impl.train_step(model, torch.optim.SGD(model.parameters(), lr=0.5), ids, mask, 0.1)
    expected_loss = _step_by_hand(by_hand, ids, mask, max_norm=0.1, lr=0.5)
    if not isinstance(loss, float) or not math.isclose(loss, expected_loss, rel_tol=1e-5):
        raise AssertionError(f"返回这一步的 loss（float，padding 的目标不计入）\n(got {loss!r}, expected {expected_loss})")
    for (name, got), want in zip(model.named_parameters(), by_hand.parameters()):
        check_close(got.detach(), want.detach(), f"参数 {name} 更新得不对：先 optimizer.zero_grad()，再 loss.backward()，"
                    "再 clip_grad_norm_(model.parameters(), max_grad_norm)，最后 optimizer.step()", atol=1e-6)


def test_train_step_lowers_the_loss(impl):
    """在同一批数据上用 AdamW 反复 train_step，loss 会降下来"""
    model = _tiny_model(1)
    ids = torch.randint(0, 23, (4, 8), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = [impl.train_step(model, optimizer, ids, None, 1.0) for _ in range(30)]
    if not losses[-1] < 0.5 * losses[0]:
        raise AssertionError(f"同一批数据上训练 30 步，loss 应至少减半：{losses[0]:.3f} -> {losses[-1]:.3f}")
