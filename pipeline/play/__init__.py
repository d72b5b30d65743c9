"""Episodes played by policies in environments: the one episode loop (collect, eval and GRPO), trajectory files,
teacher-forced imitation (SPEC 4, 7)."""
