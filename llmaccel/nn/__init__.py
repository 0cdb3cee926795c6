"""Drop-in nn.Module replacements (thin wrappers over llmaccel.ops)."""
