"""Drillyard: run many agent-environment rollouts at once, record every step,
score them, report pass@k, and feed scored groups to GRPO training."""

from __future__ import annotations

from engine.agent import Agent, AppAgent, ModelCall, extract_answer
from engine.api import Engine, Run
from engine.backend import Backend, Slot, create_backend
from engine.context import RolloutContext
from engine.environment import Environment, EnvSpec, Observation, ToolCall, ToolSpec
from engine.errors import (
    ConfigError,
    DrillyardError,
    EnvironmentLost,
    InfraError,
    NotRetryable,
    PluginNotFound,
    PolicyError,
    ShardError,
    StoreNotOpen,
    TaskFileError,
)
from engine.messages import Category, Message
from engine.passk import PassAtK, compute_pass_at_k, pass_at_k
from engine.policy import (
    Completion,
    MultiServerPolicy,
    OpenAIPolicy,
    Policy,
    SamplingParams,
    ScriptedPolicy,
    policy_affinity,
)
from engine.recording import RolloutState
from engine.registry import register
from engine.store import RolloutRecord, TraceStore
from engine.tasks import Task, TaskView, load_tasks
from engine.toolkit import FunctionEnvironment, FunctionTool

__all__ = [
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
