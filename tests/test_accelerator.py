import torch

from spherear.accelerator import make_accelerator


def test_cuda_when_there_is_one_and_mixed_precision_only_there():
    accelerator = make_accelerator("bf16")
    cuda = torch.cuda.is_available()
    assert accelerator.device.type == ("cuda" if cuda else "cpu")
    assert accelerator.mixed_precision == ("bf16" if cuda else "no")
