"""Transformer (base) on WMT16 English -> German: the paper's Table 2 row (section 4.3, appendix C.3).

Vaswani et al.'s base model and hyper-parameters: 6 + 6 layers, d_model 512,
8 heads, feed-forward 2048, dropout 0.1, label smoothing 0.1, shared
source/target/softmax embeddings, Adam (0.9, 0.98, 1e-9), inverse-square-root
LR with 4000 warmup steps (peak (512 x 4000)^-0.5 = 7.0e-4), 100k iterations,
beam search of width 4 with length penalty 0.6, no checkpoint averaging.

Variants (``--config configs/seq_transformer_wmt16.py:<variant>``), BLEU in the paper::

    variant        tokens per step                 steps     paper
    fixed_steps    4,096                           100,000   26.88 BLEU
    fixed_samples  16,384 (= 4,096 x M)            100,000   27.13 BLEU
    ba             4,096 unique x M 4 = 16,384     100,000   27.49 BLEU

Tokens are padded subword tokens, max(source, target) per pair, as fairseq's
--max-tokens. The 4 copies of each pair get different dropout masks in every
layer. Data through tensorflow_datasets (``wmt16_translate/de-en``: train
4.5M pairs, valid newstest2015, test newstest2016); a 32k shared
SubwordTextEncoder vocabulary is learnt from the first 200k training pairs
by rank 0 (once, cached in <workdir>/data with the encoded corpus).

Launch (prepare the dataset once where there is a network: ``tfds build
wmt16_translate/de-en --data_dir /data/tfds`` or --config.input.download=True):
    mpirun -np 4 .venv/bin/ba-train-seq --config configs/seq_transformer_wmt16.py:ba \\
        --workdir workdirs/wmt_ba --config.input.data_dir=/data/tfds --config.ba.m_ranks=4
    mpirun -np 4 .venv/bin/ba-eval-seq --config configs/seq_transformer_wmt16.py:ba \\
        --workdir workdirs/wmt_ba --split test
With ``ba.m_ranks=4`` each of the 4 ranks holds one copy of the same 4,096
tokens; with the default ``m_ranks=1`` every rank makes all 4 copies of its
own share. BLEU is sacreBLEU's (detokenized, 13a), typically ~1 point below
the tokenized multi-bleu figures papers of 2017-2019 report. Runtime not
measured here (no GPU, no network); Vaswani et al. report 12 hours for the
base model's 100k steps on 8 P100s.
"""
from ba_dist.config import ConfigError
from ba_dist.paper_tables import VARIANTS   # fixed_steps, fixed_samples, ba: as the image rows
from ba_dist.seq.config import base_config


def get_config(variant: str = "ba"):
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    M, d_model, warmup = 4, 512, 4000
    c = base_config()
    c.task = "translation"
    c.input.dataset = "wmt16_en_de"
    c.input.data_dir = ""             # tensorflow_datasets data_dir
    c.input.download = False
    c.input.max_tokens = 4096         # unique padded tokens per step
    c.input.max_len = 256
    c.input.vocab_size = 32768
    c.input.vocab_sentences = 200_000
    c.input.eval_batch_size = 64
    c.model.kwargs.d_model = d_model
    c.model.kwargs.num_heads = 8
    c.model.kwargs.ffn_dim = 2048
    c.model.kwargs.encoder_layers = 6
    c.model.kwargs.decoder_layers = 6
    c.model.kwargs.dropout = 0.1
    c.model.kwargs.attention_dropout = 0.0
    c.model.kwargs.relu_dropout = 0.0
    c.optim.name = "adam"
    c.optim.beta_1, c.optim.beta_2, c.optim.epsilon = 0.9, 0.98, 1e-9
    c.optim.schedule = "inverse_sqrt"
    c.optim.warmup_steps = warmup
    c.optim.base_lr = (d_model * warmup) ** -0.5   # Vaswani's d^-0.5 * warmup^-0.5 peak
    c.optim.clip_norm = 0.0
    c.optim.weight_decay = 0.0
    c.optim.label_smoothing = 0.1
    c.train.epochs = 1                # overridden by total_steps
    c.train.total_steps = 100_000
    c.train.checkpoint_every = 1
    c.eval.beam_size = 4
    c.eval.alpha = 0.6
    c.eval.extra_len = 50
    c.eval.bleu_every = 0
    c.eval.final_splits = "valid,test"
    if variant == "ba":
        c.ba.multiplicity = M
        c.ba.m_ranks = 1
    elif variant == "fixed_samples":
        c.input.max_tokens = M * 4096
    return c
