"""One module per training method, each a thin layer over its TRL trainer (torchtune-style recipes).
Each exposes `build(ctx: StageContext) -> transformers.Trainer`."""
