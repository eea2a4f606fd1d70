"""vlm: Flamingo-style vision-language models."""

__all__ = ["VLM", "GenerationConfig", "load"]


def __getattr__(name: str):
    # Imported on first use, so `import vlm.prompts` or `vlm.sketch` does not load torch and transformers.
    if name in ("VLM", "load"):
        from vlm import api

        return getattr(api, name)
    if name == "GenerationConfig":
        from vlm.generation import GenerationConfig

        return GenerationConfig
    raise AttributeError(f"module 'vlm' has no attribute {name!r}")
