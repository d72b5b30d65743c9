"""Build a policy from a recipe's `policy:` section, and an environment's own models (the RLM's sub-model)."""

from __future__ import annotations

import threading
from typing import Any

from pipeline.env.sub_model import SubModelRunner
from pipeline.policies.base import Policy
from pipeline.settings.recipe import PolicySpec

_SUB_POLICIES: dict[str, SubModelRunner] = {}
_SUB_POLICIES_LOCK = threading.Lock()


def make_policy(spec: PolicySpec) -> Policy:
    """The policy a recipe names; heavy imports happen only for the kind asked for."""
    template_kwargs = {} if spec.enable_thinking is None else {"enable_thinking": spec.enable_thinking}
    if spec.kind == "scripted":
        from pipeline.policies.inventory_expert import ScriptedExperts
        from pipeline.policies.scripted import ScriptedExpert

        options = {"chunk_size": spec.chunk_size} if spec.chunk_size else {}
        expert = ScriptedExpert(recovery_share=spec.recovery_share, note_retry_share=spec.note_retry_share, **options)
        return ScriptedExperts(expert)  # picks the Inventory expert in Inventory contexts
    if spec.kind == "scripted_rlm":
        from pipeline.policies.rlm_expert import ScriptedRLMExpert

        return ScriptedRLMExpert()
    if spec.kind == "hf":
        from pipeline.policies.hf import HFPolicy

        if not spec.model:
            raise ValueError("policy.kind 'hf' needs policy.model (a local model directory)")
        return HFPolicy(
            spec.model,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k,
            max_new_tokens=spec.max_tokens,
            chat_template_kwargs=template_kwargs or None,
            dtype=spec.dtype,
            prefix_cache=spec.prefix_cache,
            max_batch_size=spec.max_batch_size,
        )
    from pipeline.policies.openai_client import OpenAIPolicy

    if not spec.model or not spec.base_url:
        raise ValueError("policy.kind 'openai' needs policy.model and policy.base_url")
    extra = {"chat_template_kwargs": template_kwargs} if template_kwargs else None
    return OpenAIPolicy(
        spec.base_url,
        spec.model,
        api_key=spec.api_key,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        max_tokens=spec.max_tokens,
        timeout=spec.timeout,
        max_retries=spec.max_retries,
        extra_body=extra,
    )


def sub_policy_for(env_config: Any) -> SubModelRunner | None:
    """The model behind an environment's `llm_query` (`env.sub_model`), for `make_env(..., sub_policy=...)`.

    One runner (one loaded model or client) per distinct sub-model spec, shared by all episodes of the
    process; None when the environment has no sub-model.
    """
    spec = getattr(env_config, "sub_model", None)
    if spec is None:
        return None
    if not isinstance(spec, PolicySpec):  # recipes validate it already (recipe.env_section); a bare config may not
        spec = PolicySpec.model_validate(spec.model_dump() if hasattr(spec, "model_dump") else spec)
    key = spec.model_dump_json()
    with _SUB_POLICIES_LOCK:
        if key not in _SUB_POLICIES:
            _SUB_POLICIES[key] = SubModelRunner(make_policy(spec))
        return _SUB_POLICIES[key]
