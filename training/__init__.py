"""All that produces models and vectors: micro organisms, finetuning, activations, directions, transfer; and the CLI."""
