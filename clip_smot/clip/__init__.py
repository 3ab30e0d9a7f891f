"""The CLIP track: open_clip loading, the prompt, few-shot data, the fit loop, scoring and eval."""
