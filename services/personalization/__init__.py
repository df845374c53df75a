"""Personalization: on-hub DP-SGD fine-tuning and its persistent privacy ledger."""
