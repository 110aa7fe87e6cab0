"""Policies: where the agent's next message comes from."""

from __future__ import annotations

from engine.policy.base import Completion, Policy, SamplingParams, affinity, policy_affinity
from engine.policy.multi import MultiServerPolicy, ServerState
from engine.policy.openai import OpenAIPolicy
from engine.policy.scripted import ScriptedPolicy
from engine.policy.toolcalls import parse_hermes, parse_openai_tool_calls

__all__ = [
    "Completion",
    "MultiServerPolicy",
    "OpenAIPolicy",
    "Policy",
    "SamplingParams",
    "ScriptedPolicy",
    "ServerState",
    "affinity",
    "parse_hermes",
    "parse_openai_tool_calls",
    "policy_affinity",
]
