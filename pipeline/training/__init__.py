"""What SFT and GRPO train with: model and tokenizer loading, checkpoints, the GRPO trainer split by job.

Built on TRL's trainers and configs; the stages `pipeline/sft.py` and `pipeline/grpo.py` are thin `main()`s over it."""
