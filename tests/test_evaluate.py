import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ptq4vm_fx.evaluate import evaluate, logits_sqnr_db, power_ratio_db, sqnr_db, topk_accuracy

# 7 classes; label i's rank among the logits of row i is known
LOGITS = torch.tensor(
    [
        [9.0, 1, 2, 3, 4, 5, 6],  # label 0: rank 1
        [1.0, 2, 9, 3, 4, 5, 6],  # label 1: rank 7
        [9.0, 8, 1, 7, 6, 5, 4],  # label 2: rank 7
        [1.0, 2, 3, 9, 4, 5, 6],  # label 3: rank 1
        [1.0, 2, 3, 4, 5, 9, 8],
    ]
)  # label 4: rank 4
LABELS = torch.arange(5)


def _batches(logits, labels, batch_size):
    return DataLoader(TensorDataset(logits, labels), batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_evaluate_counts_top1_top5_over_uneven_batches(batch_size):
    result = evaluate(nn.Identity(), _batches(LOGITS, LABELS, batch_size), total=5)
    assert result.images == 5
    assert result.top1 == pytest.approx(40.0) and result.top5 == pytest.approx(60.0)
    assert torch.equal(result.logits, LOGITS) and torch.equal(result.labels, LABELS)
    assert result.seconds > 0 and result.images_per_second == pytest.approx(5 / result.seconds)
    assert set(result.to_dict()) == {"top1", "top5", "images", "seconds", "images_per_second"}


def test_top5_with_fewer_than_5_classes_is_100():
    assert topk_accuracy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), k=5) == 100.0
    assert topk_accuracy(LOGITS, LABELS) == pytest.approx(40.0)


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate(nn.Identity(), [])


def test_sqnr():
    ref = torch.tensor([3.0, 4.0])
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref + torch.tensor([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))
    assert power_ratio_db(0.0, 1.0) == -math.inf
    a = evaluate(nn.Identity(), _batches(LOGITS, LABELS, 2))
    b = evaluate(lambda x: x + 0.1, _batches(LOGITS, LABELS, 2))
    assert logits_sqnr_db(a, b) == pytest.approx(sqnr_db(LOGITS, LOGITS + 0.1))
    other = evaluate(nn.Identity(), _batches(LOGITS[:3], LABELS[:3], 2))
    with pytest.raises(ValueError, match="did not see the same images"):
        logits_sqnr_db(a, other)
