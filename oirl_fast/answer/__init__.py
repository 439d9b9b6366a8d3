"""``oirl answer``: ask an LLM with the prompts a policy picks from the reward model's ranking (policies, the
replay backend, the runner)."""
