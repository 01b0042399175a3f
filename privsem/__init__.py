"""privsem: private federated fine-tuning of LLMs by semantic consensus.

Clients fine-tune locally with DP-SGD, answer shared public prompts, embed the answers, clip and
noise the embeddings, and send them through an aggregation back-end; the server forms a
per-prompt consensus from the noisy sum, and pseudo-labels flow back. See DESIGN.md.
"""

__version__ = "0.1.0"
