"""The ms-swift internals Drillyard's server mode relies on, checked against the installed swift.

swift's rollout protocol and trainer methods are private and move between
releases. The plugin refuses another swift version at import; these tests
fail naming the swift symbol that moved, so an upgrade is a known change.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from engine.integrations.swift_protocol import PINNED_SWIFT, TRAINER_ROUTES

# importing swift's trainers imports trl, whose warnings are not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'"),
    pytest.mark.filterwarnings("ignore:TRL currently supports vLLM versions"),
]


def test_the_pinned_swift_is_installed(need_swift: None) -> None:
    import swift

    assert swift.__version__ == PINNED_SWIFT, (
        f"ms-swift {swift.__version__} is installed, the plugin is pinned to {PINNED_SWIFT}"
    )


def test_the_trainer_methods_the_plugin_replaces_keep_their_signatures(need_swift: None) -> None:
    from swift.rlhf_trainers.rollout_mixin import RolloutTrainerMixin

    from engine.integrations import swift_plugin

    expected = {
        "_move_model_to_vllm": ["self", "skip_async_check"],
        "_fast_infer": ["self", "samples"],
        "_wait_queue": ["self", "current_queue"],
    }
    assert set(expected) == set(swift_plugin.PATCHED)
    original = {"_move_model_to_vllm": swift_plugin.serve_weights,
                "_fast_infer": swift_plugin._fast_infer}  # fmt: skip
    for name, params in expected.items():
        fn = original.get(name, getattr(RolloutTrainerMixin, name))
        got = list(inspect.signature(fn).parameters)
        assert got == params, f"swift RolloutTrainerMixin.{name}{got} moved (expected {params})"
    assert RolloutTrainerMixin._move_model_to_vllm is swift_plugin.serve_weights


def test_swifts_rollout_server_has_the_routes_the_trainer_calls(need_swift: None) -> None:
    from swift.pipelines.infer.rollout import SwiftRolloutDeploy

    source = inspect.getsource(SwiftRolloutDeploy._register_rl_rollout_app)
    served = set(re.findall(r"self\.app\.(get|post)\('([^']+)'", source))
    ours = {(method.lower(), path) for method, path in TRAINER_ROUTES}
    missing = ours - served
    assert not missing, f"swift rollout no longer serves {sorted(missing)}"


def test_the_wire_shapes_are_swifts(need_swift: None) -> None:
    from swift.infer_engine.protocol import (
        ChatCompletionResponseChoice,
        RequestConfig,
        RolloutInferRequest,
        RolloutOutput,
    )

    from engine.integrations import swift_protocol

    request_fields = {f.name for f in dataclasses.fields(RolloutInferRequest)}
    assert set(swift_protocol.InferRequest.model_fields) <= request_fields
    config_fields = {f.name for f in dataclasses.fields(RequestConfig)}
    assert set(swift_protocol.RequestConfig.model_fields) <= config_fields
    output_fields = set(RolloutOutput.model_fields)
    needed = {"response", "messages", "response_token_ids", "response_loss_mask",
              "rollout_infos", "rollout_logprobs"}  # fmt: skip
    assert needed <= output_fields, f"RolloutOutput lost {sorted(needed - output_fields)}"
    choice = {f.name for f in dataclasses.fields(ChatCompletionResponseChoice)}
    assert {"message", "finish_reason", "token_ids", "logprobs"} <= choice


def test_a_world_of_one_needs_no_nccl(need_swift: None) -> None:
    """The server answers world size 0, so the trainer's group is itself alone:
    vLLM's communicator is then disabled instead of looking for NCCL."""
    from swift.rlhf_trainers.vllm_client import VLLMClient
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

    source = inspect.getsource(VLLMClient.init_communicator)
    assert "world_size = vllm_world_size + 1" in source, "swift's group sizing moved"
    assert "self.world_size == 1" in inspect.getsource(PyNcclCommunicator.__init__)
