"""Layer names are torch module paths, for both exporters, through nn.Sequential blocks and fused BatchNorms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.core.model import load_model

RESNET_LAYERS = {
    "conv1",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer2.0.downsample.0",
    "fc",
}


def test_legacy_scope_names_drop_repeated_parents(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [
        "/layer1/layer1.0/conv1/Conv",
        "/layer1/layer1.0/downsample/downsample.0/Conv",
        "/features/features.3/Conv",
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), f"w{i}") for i in range(3)]
    nodes = [
        helper.make_node("Conv", ["x" if i == 0 else f"y{i - 1}", f"w{i}"], [f"y{i}"], name=name)
        for i, name in enumerate(names)
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, 2, 2])], inits,
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert load_model(path).layer_names == ["layer1.0.conv1", "layer1.0.downsample.0", "features.3"]


def _resnet(path: Path, dynamo: bool) -> Path:
    torch = pytest.importorskip("torch")
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride > 1 else None
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            idt = x if self.downsample is None else self.downsample(x)
            return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + idt)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.layer1 = nn.Sequential(Block(8, 8, 1))
            self.layer2 = nn.Sequential(Block(8, 16, 2))
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    example = torch.randn(2, 3, 16, 16)
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(net, (example,), str(path), dynamo=True, opset_version=21, input_names=["x"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    else:
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    return path


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_resnet_names_and_macs_from_both_exporters(tmp_path: Path, exporter: str) -> None:
    path = _resnet(tmp_path / f"{exporter}.onnx", dynamo=exporter == "dynamo")
    model = load_model(path, {"x": [1, 3, 16, 16]})
    assert set(model.layer_names) == RESNET_LAYERS and len(model.layers) == len(RESNET_LAYERS)
    macs = {lay.name: lay.macs for lay in model.layers}
    assert macs["conv1"] == 8 * 16 * 16 * 3 * 9
    assert macs["layer2.0.conv1"] == 16 * 8 * 8 * 8 * 9  # stride 2
    assert macs["layer2.0.downsample.0"] == 16 * 8 * 8 * 8
    assert macs["fc"] == 16 * 10
