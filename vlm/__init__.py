"""vlm: Flamingo-style vision-language models."""
