"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Run the suite on one intra-op thread.

    The tests use tiny models, where threading buys nothing; and on a 2-core machine shared with other work,
    two OpenMP threads spin-wait on each other and ran a tiny UNet step up to ~100× slower. Subprocesses
    started by tests pass ``--num-threads 1`` themselves.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
