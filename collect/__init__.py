"""Import and collect offline logs (installed as ``oirl_fast.collect``)."""

DATASETS = ("gsm8k", "svamp", "mawps")  # the published Prompt-OIRL logs bundled with oirl-fast
