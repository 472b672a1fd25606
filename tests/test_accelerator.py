import pytest
import torch
from accelerate.state import AcceleratorState

from spherear.accelerator import make_accelerator


@pytest.fixture
def fresh_state():
    """Accelerate keeps one state per process: start this test's and leave none behind."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_autocast_on_whatever_device_there_is(fresh_state):
    accelerator = make_accelerator("bf16")
    assert accelerator.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert accelerator.mixed_precision == "bf16"
    a = torch.randn(4, 8, device=accelerator.device)
    with accelerator.autocast():
        assert (a @ a.T).dtype == torch.bfloat16
    assert (a @ a.T).dtype == torch.float32
