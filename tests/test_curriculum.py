"""The GRPO curriculum (pipeline/data/curriculum.py): a stage advances on a full window at threshold, and resumes."""

from __future__ import annotations

import json

import pytest

from pipeline.data.curriculum import Curriculum, CurriculumConfig

STAGES = [
    {"n_chunks": 5, "words_per_chunk": 200},
    {"n_chunks": 10, "words_per_chunk": 500},
    {"n_chunks": 20, "words_per_chunk": 1000},
]


def test_curriculum_needs_a_full_window_at_the_threshold_to_advance():
    curriculum = Curriculum(CurriculumConfig(stages=STAGES, window=4, threshold=0.75))
    assert curriculum.stage.generator_kwargs() == {"n_chunks": 5, "words_per_chunk": 200}
    assert [curriculum.update(True) for _ in range(3)] == [False] * 3  # 100%, but the window is not full yet
    assert curriculum.update(False) is True  # 3 of the last 4 reach 0.75
    assert curriculum.stage.generator_kwargs() == {"n_chunks": 10, "words_per_chunk": 500}


def test_curriculum_threshold_window_and_resume():
    curriculum = Curriculum(CurriculumConfig(stages=STAGES, window=4, threshold=0.75))
    results = [True, False, False, True, True, True]  # rates over the last 4: 0.5 at ep 4, 0.75 at ep 6
    changed = [curriculum.update(r) for r in results]
    assert changed == [False, False, False, False, False, True]
    assert curriculum.stage == curriculum.config.stages[1] and curriculum.success_rate == 0.0  # a fresh window
    assert curriculum.history == [{"stage": 1, "episode": 6}]
    curriculum.update(True)
    state = json.loads(json.dumps(curriculum.state_dict()))
    resumed = Curriculum(CurriculumConfig(stages=STAGES, window=4, threshold=0.75))
    resumed.load_state_dict(state)
    assert resumed.state_dict() == curriculum.state_dict()
    assert [resumed.update(True) for _ in range(3)] == [False, False, True] and resumed.is_last
    assert [resumed.update(True) for _ in range(8)] == [False] * 8 and resumed.stage.n_chunks == 20
    with pytest.raises(ValueError, match="differ from the recipe's stages"):
        Curriculum(CurriculumConfig(stages=STAGES[:2], window=4)).load_state_dict(state)
    with pytest.raises(ValueError, match="same"):
        CurriculumConfig(stages=[STAGES[0], STAGES[0]])
