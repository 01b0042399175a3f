"""Models: loading (built-in names, HF directories, GGUF files), LoRA, DP-SGD, generation, embedding."""
