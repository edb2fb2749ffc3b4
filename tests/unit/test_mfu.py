"""MFU's FLOP count: 6 N + 12 L T d, checked against a model whose matrices we count by hand."""

import torch

from lmdisc.mfu import flops_per_token, peak_flops
from lmdisc.models import GPT, LSTMLanguageModel


def test_gpt_flops_per_token_is_six_n_plus_attention():
    model = GPT(100, block_size=16, n_layer=2, n_head=2, n_embd=8, dropout=0.0)
    d, layers = 8, 2
    # per block: c_attn 8x24, attn c_proj 8x8, c_fc 8x32, mlp c_proj 32x8; the tied output 100x8
    per_block = d * 3 * d + d * d + d * 4 * d + 4 * d * d
    matmul = layers * per_block + 100 * d
    assert flops_per_token(model, 16) == 6 * matmul + 12 * layers * 16 * d


def test_lstm_flops_count_its_recurrent_and_output_matrices_not_the_lookup():
    model = LSTMLanguageModel(50, emb_size=4, hidden_size=6, num_layers=1, dropout=0.0, tie_weights=False)
    matmul = 4 * 6 * 4 + 4 * 6 * 6 + 50 * 6  # W_ih, W_hh, decoder
    assert flops_per_token(model, 35) == 6 * matmul


def test_no_peak_and_no_mfu_off_a_gpu():
    assert peak_flops(torch.device("cpu")) is None
