import pytest
import torch

from spherear.errors import SpherearError
from spherear.numerics import adopt, describe


def test_a_continued_artefact_takes_its_thread_count_and_refuses_another_cpu():
    threads = torch.get_num_threads()
    said = []
    try:
        adopt({**describe("cpu"), "threads": threads + 1}, "cpu", "out", said.append)
        assert torch.get_num_threads() == threads + 1
        assert said == [f"out was computed with {threads + 1} intra-op thread(s); continuing "
                        f"with {threads + 1} instead of {threads}, so the results match an "
                        "uninterrupted run"]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(SpherearError, match=r"out was computed with other numerics \(cpu_cap"):
        adopt({**describe("cpu"), "cpu_capability": "NEON"}, "cpu", "out", said.append)
    assert len(said) == 1
