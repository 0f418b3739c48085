"""The tone trainer's transducer loss against NeMo's reference implementation."""

from __future__ import annotations

import pytest
import torch

from streamd.models.training import transducer_loss
from streamd.nemo_import import import_nemo_asr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_transducer_loss_equals_nemo_reference(seed):
    import_nemo_asr()
    from nemo.collections.asr.losses.rnnt_pytorch import RNNTLossPytorch

    torch.manual_seed(seed)
    batch, steps, labels, vocab = 4, 11, 5, 9
    logits = torch.randn(batch, steps, labels + 1, vocab, requires_grad=True)
    targets = torch.randint(0, vocab - 1, (batch, labels))
    frames = torch.tensor([11, 9, 4, 11])
    lengths = torch.tensor([5, 3, 1, 0])
    reference = RNNTLossPytorch(blank=vocab - 1, reduction="sum")(
        acts=logits, labels=targets, act_lens=frames, label_lens=lengths)
    ours = transducer_loss(logits, targets, frames, lengths, blank=vocab - 1).sum()
    (grad_ref,) = torch.autograd.grad(reference, logits)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    assert torch.allclose(ours, reference, rtol=1e-5)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-5)
