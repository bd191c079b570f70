"""The base of every config: all keys with their defaults and meaning.

The keys and their comments are in ddfp_jax/config/defaults.py (shared blocks) and in each
method's module under ddfp_jax/methods/ (its own block, config.<method>). Variant configs
start from `base.get_config()` and override fields.
"""
from ddfp_jax.config import defaults


def get_config():
  return defaults.get_config()
