"""The GPU architecture, read in one place: per device index (the tensor's, not the current device), once each."""
import pytest
import torch

from neva_kernels import architecture


@pytest.fixture
def gpus(monkeypatch):
    """Pretend devices: cuda:0 an H100, cuda:1 an A100, cuda:2 a B200, cuda:3 an RTX 5090; count the queries."""
    capabilities = {0: (9, 0), 1: (8, 0), 2: (10, 0), 3: (12, 0)}
    asked = []

    def capability(index):
        asked.append(index)
        return capabilities[index]
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    architecture._capability_of_index.cache_clear()
    yield asked
    architecture._capability_of_index.cache_clear()


def test_each_device_gets_its_own_architecture(gpus):
    names = [architecture.architecture(torch.device("cuda", i)) for i in range(4)]
    assert names == ["sm90", "sm80", "sm100", "sm120"]
    assert architecture.architecture(torch.device("cpu")) == "cpu"


def test_only_compute_capability_9_is_hopper(gpus):
    assert [architecture.is_hopper(torch.device("cuda", i)) for i in range(4)] == [True, False, False, False]
    assert [architecture.generation(torch.device("cuda", i)) for i in range(4)] == ["sm90", "sm80", "sm80", "sm80"]
    assert not architecture.is_hopper(torch.device("cpu"))
    assert architecture.generation(torch.device("cpu")) == "cpu"


def test_the_capability_is_read_once_per_device_index(gpus):
    for _ in range(3):
        for i in (1, 0, 1):
            architecture.generation(torch.device("cuda", i))
    assert sorted(gpus) == [0, 1]


def test_the_device_of_the_tensor_decides_not_the_current_device(gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert architecture.generation(torch.device("cuda", 0)) == "sm90"
    assert architecture.generation(torch.device("cuda")) == "sm80"  # no index: the current device


def test_aot_capability_of_each_gpu_generation():
    assert {g: architecture.capability_number(g) for g in architecture.GPU_GENERATIONS} == {"sm80": 80, "sm90": 90}
