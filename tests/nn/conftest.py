import pytest
import torch


def make_tiny_llama(seed: int = 0, **overrides):
    """A random 2-block Llama (hidden 64, MLP 128, grouped-query attention): every code path, in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    kw.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tiny_ids():
    return torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
