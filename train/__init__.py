"""Reward-model training and compilation (installed as ``oirl_fast.train``)."""
