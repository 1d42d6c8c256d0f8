import os

import pytest

os.environ.setdefault("ECHOCLR_FORCE_CPU", "1")  # tests never touch a GPU


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    yield
