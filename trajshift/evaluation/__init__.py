"""Evaluation: finetuning protocols, the meta-test, meta-validation and the settings every door resolves the same way."""
