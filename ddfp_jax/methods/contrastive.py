"""The InfoNCE loss of the contrastive methods (DGCL, CSS): one positive key and a set of
negative keys per anchor, cross-entropy with the positive as the target.

Each method chooses its anchors, positive and negatives (DGCL: low-density anchors, a
high-density positive, negatives shared by every anchor; CSS: hard anchors, the class
prototype, negatives drawn per anchor by class similarity) and passes the cosine
similarities here. `eps` is the only difference in the loss itself: DGCL's release
writes log(sum exp + 1e-6) after subtracting each row's maximum; CSS's release is the
plain cross-entropy (eps = 0, exactly log-softmax).
"""
import jax
import jax.numpy as jnp

Array = jax.Array


def info_nce(similarity: Array, key_valid: Array, anchor_weight: Array,
             temperature: float, eps: float = 0.0) -> Array:
  """Mean over anchors (weighted) of -log softmax(similarity / tau)[positive].

  similarity: (A, 1 + M) cosine similarities of each anchor to its positive (column 0)
  and M negatives; key_valid: broadcastable to it, False for a negative that is not
  there (padding); anchor_weight (A,): 0 for anchors that are not there.
  """
  logits = jnp.where(key_valid, similarity / temperature, -jnp.inf)
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  log_prob = logits[:, 0] - jnp.log(jnp.sum(jnp.exp(logits), axis=1) + eps)
  weight = anchor_weight.astype(jnp.float32)
  return -jnp.sum(log_prob * weight) / jnp.maximum(jnp.sum(weight), 1.0)
