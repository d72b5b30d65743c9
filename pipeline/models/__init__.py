"""Students that need no hub: the project's tiny random Qwen3 (unit tests) and packaged pretrained models imported
from GGUF (`statelm base-model smollm2`, the CPU demo's student)."""
