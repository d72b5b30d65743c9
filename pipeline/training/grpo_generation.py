"""GRPO's generation (SPEC 6): the local episodes played through the one episode loop (pipeline/play/episodes.py).

A round renders every live context and generates one assistant message each through TRL's backends: the
prefix-cached generator (`prefix_cache`, HF models: one unwrapped model, ZeRO-3 gathered once per generation),
TRL's `_generate_single_turn` (HF `generate` under `unwrap_model_for_generation`, or vLLM colocate), or the vLLM
server through TRL's client. Each reply comes back token-in/token-out: the decoded text the environment parses,
the sampled ids and vLLM's logprobs, which the turns keep and `grpo_rows.py` trains. With collective generation
(ZeRO-3 / FSDP over processes, the vLLM server) every process runs the same rounds.

A mixin of `StateLMGRPOTrainer`: it reads the trainer's TRL state (model, accelerator, sampling settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather, gather_object
from tqdm.auto import tqdm
from trl.models import unwrap_model_for_generation

from pipeline.data.trajectory import Trajectory
from pipeline.play.episodes import Episode, PlaySettings, play_in_rounds
from pipeline.policies.base import Action
from pipeline.policies.hf import decode_assistant
from pipeline.policies.prefix_cache import PrefixCachingGenerator, SamplingSettings
from pipeline.tasks.schema import Task


@dataclass
class PlayedEpisode:
    """One played episode; what training needs beyond the record (the sampled ids) is on its turns."""

    trajectory: Trajectory


class EpisodeGeneration:
    """Plays a generation's local episodes (mixed into StateLMGRPOTrainer)."""

    _generator: PrefixCachingGenerator | None = None  # set while a generation plays (prefix_cache)
    _generation_model: Any = None  # the generation_dtype copy of the weights, refreshed at every generation

    def _play(self, tasks: list[Task], episode_ids: list[str]) -> list[PlayedEpisode]:
        """All local episodes through the one episode loop (pipeline/play/episodes.py), in lockstep rounds of batched
        generation until every environment is done; records in the order of `tasks`."""
        if self.use_vllm and self.state.global_step != self._last_loaded_step:
            self.vllm_generation.sync_weights()  # collective: every process, once per generation
            self._last_loaded_step = self.state.global_step
        step = self.state.global_step
        settings = PlaySettings(self._tokenizer, self.env_config, self.grader, self.args.rewards, "grpo",
                                {"global_step": step})  # fmt: skip
        if len(set(episode_ids)) != len(episode_ids):
            raise RuntimeError(f"episode ids repeat within a generation: {episode_ids}")
        episodes = [Episode(t, k, self.args.seed, i) for k, (t, i) in enumerate(zip(tasks, episode_ids, strict=True))]
        played: dict[str, Trajectory] = {}
        bar = tqdm(total=len(episodes), desc=f"episodes (step {step + 1})", leave=False,
                   disable=not self.accelerator.is_local_main_process or self.args.disable_tqdm)  # fmt: skip

        async def done(trajectory: Trajectory) -> None:
            played[trajectory.episode_id] = trajectory
            bar.update(1)
            bar.set_postfix(end=trajectory.end_state, refresh=False)

        with self._prefix_cached_generation():
            lockstep = self._generation_is_collective() and self._generator is None
            collective = self._any_process_live if lockstep else None
            asyncio.run(play_in_rounds(episodes, self._generate_actions(lockstep), settings, len(episodes), done,
                                       collective))  # fmt: skip
        bar.close()
        return [PlayedEpisode(played[e.episode_id]) for e in episodes]

    def _any_process_live(self, live: int) -> bool:
        """Collective generation: another round while any process has a live episode (all run the same rounds)."""
        return gather(torch.tensor([live], device=self.accelerator.device)).sum().item() > 0

    def _generate_actions(self, lockstep: bool):
        """The episode loop's round: render every live context, generate through TRL's backends, and hand back
        the decoded text with the sampled ids (and vLLM's logprobs): token-in/token-out."""

        async def generate(contexts, tools, seeds) -> list[Action]:
            prompts = [self._prompt_ids(m, t) for m, t in zip(contexts, tools, strict=True)]
            completions, logprobs = self._generate_round(prompts, lockstep)
            actions = []
            for k, ids in enumerate(completions):
                logps = None if logprobs is None else list(logprobs[k])
                text = decode_assistant(self._tokenizer, list(ids), self._drop_ids)
                actions.append(Action(text, token_ids=list(ids), logprobs=logps))
            return actions

        return generate

    @contextlib.contextmanager
    def _prefix_cached_generation(self):
        """With HF generation and `prefix_cache`, one unwrapped model (ZeRO-3: gathered once) generates every round
        of this generation through a fresh prefix cache (the weights changed since the last one)."""
        self._generator = None
        if self.use_vllm or not self.args.prefix_cache:
            yield
            return
        with (
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
        ):  # fmt: skip
            pad_id = self._tokenizer.pad_token_id
            entries = 2 * self.args.episodes_per_process + 8
            model = unwrapped if self.args.generation_dtype is None else self._generation_copy(unwrapped)
            self._generator = PrefixCachingGenerator(model, pad_id, self.eos_token_ids, max_entries=entries)
            try:
                yield
            finally:
                self._generator.clear()
                self._generator = None

    def _generation_copy(self, model: Any) -> Any:
        """The weights being trained, copied into a generation-only model of `generation_dtype` (made once, then
        refreshed at every generation, as a vLLM engine's weights are synced)."""
        dtype = getattr(torch, self.args.generation_dtype)
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise ValueError("generation_dtype needs whole weights on each process: not with ZeRO-3")
        if self._generation_model is None:
            clone = copy.deepcopy(model)
            for module in clone.modules():
                # TRL's fused LM head is a bound method on the instance whose closure calls the *original* model's
                # forward: the copy takes its class's own forward instead
                module.__dict__.pop("forward", None)
            self._generation_model = clone.to(dtype).eval().requires_grad_(False)
        else:
            self._generation_model.load_state_dict(model.state_dict())  # copy_ casts to the copy's dtype
        return self._generation_model

    def _generation_is_collective(self) -> bool:
        """Whether a generation call needs every process (then all processes run the same number of rounds)."""
        if self.accelerator.num_processes == 1:
            return False
        if self.use_vllm:
            return self.vllm_mode == "server"
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        return zero3 or self.is_fsdp_enabled

    def _prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
        return self._tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=True,
            **self.segment_kwargs,
        )["input_ids"]  # fmt: skip

    def _generate_round(self, prompts: list[list[int]], lockstep: bool) -> tuple[list[list[int]], list | None]:
        """One assistant message per prompt, through TRL's generation backends."""
        if self.use_vllm and self.vllm_mode == "server":
            return self._generate_vllm_server(prompts)
        if self._generator is not None:
            settings = SamplingSettings(self.max_completion_length, self.temperature, self.top_p, self.top_k)
            return self._generator.generate(prompts, settings), None
        if not prompts:
            if not lockstep:
                return [], None
            # A process with no live episode still takes part (ZeRO-3 gathers weights for generate)
            self._generate_single_turn([[self._tokenizer.eos_token_id]], None, {}, 1)
            return [], None
        return self._generate_single_turn(prompts, None, {}, 1)

    def _generate_vllm_server(self, prompts: list[list[int]]) -> tuple[list[list[int]], list]:
        """TRL's vLLM server client with per-process prompt counts that differ (episodes end at different rounds).
        Untested here: vLLM does not install on this CPU-only machine."""
        gen = self.vllm_generation
        per_process = gather_object([prompts])
        payload = None
        if self.accelerator.is_main_process:
            flat = [p for chunk in per_process for p in chunk]
            output = {"completion_ids": [], "logprobs": []}
            if flat:
                output = gen.vllm_client.generate(
                    prompts=flat, n=1, repetition_penalty=gen.repetition_penalty, temperature=gen.temperature,
                    top_p=gen.top_p, top_k=gen.top_k, min_p=0.0 if gen.min_p is None else gen.min_p,
                    max_tokens=gen.max_completion_length, logprobs=gen.logprobs,
                    structured_outputs_regex=gen.structured_outputs_regex, generation_kwargs=gen.generation_kwargs,
                )  # fmt: skip
            payload = (output["completion_ids"], output["logprobs"])
        payload = broadcast_object_list([payload], from_process=0)[0]
        start = sum(len(chunk) for chunk in per_process[: self.accelerator.process_index])
        completions = payload[0][start : start + len(prompts)]
        logprobs = [[lp[0] for lp in seq] for seq in payload[1][start : start + len(prompts)]]
        return completions, logprobs
