"""mmrl: turn vision-language models into reasoners with reinforcement learning."""

__version__ = "0.1.0"
