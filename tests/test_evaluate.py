"""`statelm eval`: report figures, baselines and plots on the tiny model."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.task_sources import load_tokenizer
from pipeline.env.pensieve import EnvConfig
from pipeline.play.imitation import imitation_figures
from pipeline.play.rollout import plan_episodes, play_episode
from pipeline.policies.scripted import ScriptedExpert
from pipeline.reports.eval_figures import length_bucket
from pipeline.tasks.generators import generate_niah
from pipeline.tasks.graders import grade


def test_length_buckets():
    assert [length_bucket(n) for n in (500, 2000, 2001, 40_000, 3_000_000)] == [
        "<=2K",
        "<=2K",
        "2K-8K",
        "32K-128K",
        ">512K",
    ]


def test_eval_reports_model_and_baselines_with_plots(tiny_model_dir, tmp_path):
    recipe = {
        "output_dir": str(tmp_path / "eval"),
        "tasks": [
            {"generator": "niah", "n": 2, "min_tokens": 1000, "max_tokens": 1500, "seed": 100},
            {"generator": "multihop", "n": 1, "min_tokens": 3000, "max_tokens": 3000, "seed": 101},
        ],
        "models": {"random": {"kind": "hf", "model": str(tiny_model_dir), "temperature": 0.0, "max_tokens": 16}},
        "baselines": ["scripted", "no_tools"],
        "expert": {"kind": "scripted", "chunk_size": 700},
        "no_tools_max_tokens": 2600,
        "no_tools_max_output_tokens": 8,
        "environment": {"max_rounds": 14},
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["eval", "--recipe", str(tmp_path / "eval.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    systems = report["systems"]
    assert set(systems) == {"random", "scripted_expert", "no_tools"}
    assert systems["scripted_expert"]["accuracy"] == 1.0
    assert systems["scripted_expert"]["accuracy_by_task"] == {"niah": 1.0, "multihop": 1.0}
    assert systems["random"]["episodes"] == 3 and systems["random"]["accuracy"] == 0.0
    assert set(systems["random"]["end_states"]) <= {"malformed", "max_rounds", "over_budget"}
    assert systems["no_tools"]["episodes"] == 3 and systems["no_tools"]["fits"] == 2  # the 3K input does not fit
    for name in ("accuracy_by_length.png", "sawtooth_random.png", "sawtooth_scripted_expert.png"):
        data = (tmp_path / "eval" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "| scripted_expert | 100% |" in markdown and "![sawtooth scripted_expert]" in markdown
    # the scripted baseline is the recipe's expert: it indexes with the chunk size it was given
    expert_lines = (tmp_path / "eval" / "scripted_expert" / "trajectories.jsonl").read_text().splitlines()
    sizes = {c["arguments"].get("chunk_size") for line in expert_lines for u in json.loads(line)["turns"]
             for c in u["tool_calls"] if c["name"] == "buildIndex"}  # fmt: skip
    assert sizes == {700}
    # a random model imitates none of the expert's turns; every expert turn is counted once
    imitation = systems["random"]["imitation"]
    expert_turns = sum(
        len(json.loads(line)["turns"]) for line in (tmp_path / "eval" / "scripted_expert" / "trajectories.jsonl").open()
    )
    assert imitation["turns"] == expert_turns and imitation["exact_turn_rate"] == 0.0
    actions = set(imitation["exact_turn_rate_by_action"])
    assert {"buildIndex", "searchEngine", "note", "deleteContext", "finish"} <= actions
    assert "Imitation of the expert" in markdown
    # each system says how long it played (the demo's eval is most of its time)
    assert all(systems[name]["seconds"] > 0 for name in ("random", "scripted_expert", "no_tools"))
    assert "seconds played" in markdown


class _Oracle(torch.nn.Module):
    """Predicts the next token of its own input (a perfect imitator), except the `wrong` ids."""

    def __init__(self, vocab: int, wrong: set[int] = frozenset()) -> None:
        super().__init__()
        self.vocab, self.wrong = vocab, wrong
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)
        for i, token in enumerate(nxt[0].tolist()):
            if token in self.wrong:
                nxt[0, i] = (token + 1) % self.vocab
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float())


def test_imitation_counts_exactly_the_turns_whose_tokens_are_all_predicted(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    task = generate_niah(1, 1200, 1200, seed=3, tokenizer=tokenizer)[0]
    episode = plan_episodes([task], 1, 0)[0]
    traj = asyncio.run(play_episode(episode, ScriptedExpert(chunk_size=500), tokenizer, EnvConfig(), grade))
    vocab = len(tokenizer) + 64
    perfect = imitation_figures(_Oracle(vocab), tokenizer, [traj])
    assert perfect["turns"] == len(traj.turns) and perfect["exact_turn_rate"] == 1.0
    assert perfect["token_accuracy"] == 1.0

    # mispredicts one token that only the finish turn holds: the finish turn fails, every other turn holds
    def ids(text: str) -> set[int]:
        return set(tokenizer(text, add_special_tokens=False)["input_ids"])

    texts = {u.action: traj.messages[u.assistant].content for u in traj.turns}
    only_finish = ids(texts.pop("finish")) - set().union(*(ids(t) for t in texts.values()))
    assert only_finish
    finish_id = min(only_finish)
    flawed = imitation_figures(_Oracle(vocab, {finish_id}), tokenizer, [traj])["exact_turn_rate_by_action"]
    assert flawed["finish"] == 0.0
    assert all(rate == 1.0 for action, rate in flawed.items() if action != "finish")


def test_imitation_leaves_out_the_turns_the_expert_marked_untrained(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    task = generate_niah(1, 1200, 1200, seed=3, tokenizer=tokenizer, templates="train")[0]
    episode = plan_episodes([task], 1, 0)[0]
    expert = ScriptedExpert(chunk_size=500, recovery_share=1.0)
    traj = asyncio.run(play_episode(episode, expert, tokenizer, EnvConfig(), grade))
    untrained = [u for u in traj.turns if not u.trained]
    assert len(untrained) == 1 and untrained[0].action == "searchEngine"
    figures = imitation_figures(_Oracle(len(tokenizer) + 64), tokenizer, [traj])
    assert figures["turns"] == len(traj.turns) - 1
