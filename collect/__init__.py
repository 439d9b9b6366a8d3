"""Import and collect offline logs (installed as ``oirl_fast.collect``)."""
