"""Pass: record the model's calibration inputs (JLSS replays them block by block)."""

from __future__ import annotations

import torch
import torch.fx
from torch import Tensor, nn

RECORDER = "calibration_inputs"


class InputRecorder(nn.Module):
    """Pass-through counting calibration batches; keeps them (on the CPU) when ``keep``."""

    def __init__(self, keep: bool):
        super().__init__()
        self.keep = keep
        self.batches = 0
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.batches += 1
        if self.keep:
            self.inputs.append(x.detach().to("cpu", torch.float32))
        return x

    def images(self) -> Tensor:
        return torch.cat(self.inputs)


def insert_input_recorder(gm: torch.fx.GraphModule, keep: bool) -> None:
    (placeholder,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
    gm.add_submodule(RECORDER, InputRecorder(keep))
    with gm.graph.inserting_after(placeholder):
        recorded = gm.graph.call_module(RECORDER, (placeholder,))
    placeholder.replace_all_uses_with(recorded, delete_user_cb=lambda user: user is not recorded)
    gm.recompile()


def remove_input_recorder(gm: torch.fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == RECORDER:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.delete_submodule(RECORDER)
    gm.recompile()
