"""The public API an app imports is pinned: changing it is a deliberate act."""

from __future__ import annotations

import engine


def test_public_names_are_pinned() -> None:
    assert sorted(engine.__all__) == [
        "Agent",
        "AppAgent",
        "Backend",
        "Category",
        "Completion",
        "ConfigError",
        "DrillyardError",
        "Engine",
        "EnvSpec",
        "Environment",
        "EnvironmentLost",
        "FunctionEnvironment",
        "FunctionTool",
        "InfraError",
        "Message",
        "ModelCall",
        "MultiServerPolicy",
        "NotRetryable",
        "Observation",
        "OpenAIPolicy",
        "PassAtK",
        "PluginNotFound",
        "Policy",
        "PolicyError",
        "RolloutContext",
        "RolloutRecord",
        "RolloutState",
        "Run",
        "SamplingParams",
        "ScriptedPolicy",
        "ShardError",
        "Slot",
        "StoreNotOpen",
        "Task",
        "TaskFileError",
        "TaskView",
        "ToolCall",
        "ToolSpec",
        "TraceStore",
        "compute_pass_at_k",
        "create_backend",
        "extract_answer",
        "load_tasks",
        "pass_at_k",
        "policy_affinity",
        "register",
    ]
    for name in engine.__all__:
        assert hasattr(engine, name), name


def test_the_core_does_not_import_plugins_at_import_time() -> None:
    import subprocess
    import sys

    code = (
        "import sys, engine, engine.api, engine.cli, engine.bench; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('backends', 'tools', 'gaia', 'vllm', 'swift', 'kubernetes_asyncio', 'playwright',"
        " 'ray')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
