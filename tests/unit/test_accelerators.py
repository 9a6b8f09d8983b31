"""accelerator_type as Ray's: the option's resource, and the type a worker reads
from its GPU's name (worker/host.py), without a GPU."""

from __future__ import annotations

import pytest

from taskgraph import _options
from taskgraph.util import accelerators
from taskgraph.worker.host import accelerator_type_of


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("Tesla V100-SXM2-16GB", accelerators.NVIDIA_TESLA_V100),
        ("NVIDIA A100-SXM4-80GB", accelerators.NVIDIA_A100),
        ("NVIDIA H100 80GB HBM3", accelerators.NVIDIA_H100),
        ("NVIDIA H200", accelerators.NVIDIA_H200),
        ("Tesla T4", accelerators.NVIDIA_TESLA_T4),
        ("NVIDIA A10G", accelerators.NVIDIA_TESLA_A10G),
        ("NVIDIA L40S", accelerators.NVIDIA_L40S),
        ("NVIDIA GeForce RTX 3090", "GeForce-RTX-3090"),
    ],
)
def test_a_gpus_name_gives_rays_accelerator_type(name, kind):
    assert accelerator_type_of(name) == kind


def test_the_option_asks_for_a_sliver_of_the_types_resource():
    options = _options.validate({"num_gpus": 1, "accelerator_type": accelerators.NVIDIA_A100})
    assert _options.task_resources(options) == {
        "CPU": 1.0,
        "GPU": 1.0,
        "accelerator_type:A100": 0.001,
    }
    with pytest.raises(TypeError, match="accelerator_type must be a name"):
        _options.validate({"accelerator_type": 100})


def test_max_calls_defaults_to_one_for_gpu_tasks_only():
    assert _options.default_max_calls({}) == 0
    assert _options.default_max_calls({"num_gpus": 0.5}) == 1
    assert _options.default_max_calls({"num_gpus": 1, "max_calls": 0}) == 0
    assert _options.default_max_calls({"max_calls": 3}) == 3
