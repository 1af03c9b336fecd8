"""Word-level LSTM language model on Penn Treebank: the paper's Table 2 row (section 4.3).

3-layer LSTM, width 1150, embeddings 400 (tied with the softmax, so the last
layer is 400 wide), locked dropout 0.4 on the input and 0.25 on the hidden
states between layers (0.4 on the output), "no fine-tuning"; SGD at LR 30
with gradient clipping 0.25, weight decay 1.2e-6, BPTT 70, 500 epochs, as
AWD-LSTM (Merity et al. 2017) without weight drop / AR / TAR / NT-ASGD.

Variants (``--config configs/seq_lstm_ptb.py:<variant>``), test perplexity in the paper::

    variant        streams per step       epochs   steps/epoch   steps      paper
    fixed_steps    20                       500       663        331,500    58.8 ppl
    fixed_samples  200 (= 20 x M)          5000        66        330,000    58.8 ppl
    ba             20 unique x M 10 = 200   500       663        331,500    58.6 ppl

(929,589 training tokens incl. <eos>; a stream of 46,479 tokens gives
(46,479 - 1) // 70 = 663 steps at B=20, 4,647 tokens and 66 steps at B=200.)
Every one of the 10 copies of a stream carries its own recurrent state and
gets its own locked-dropout masks; the tokens are identical.

Data: Mikolov's PTB files (simple-examples/data/ptb.{train,valid,test}.txt):
    mpirun -np 1 .venv/bin/ba-train-seq --config configs/seq_lstm_ptb.py:ba \\
        --workdir workdirs/ptb_ba --config.input.data_dir=/data/ptb
    .venv/bin/ba-eval-seq --config configs/seq_lstm_ptb.py:ba --workdir workdirs/ptb_ba --split test
On more GPUs spread the copies: ``mpirun -np 2 ... --config.ba.m_ranks=2``
(each rank 5 copies of the same 20 streams). Validation uses 10 streams and
test 1 stream, as AWD-LSTM. Runtime and result not measured here (no GPU,
no PTB); without AWD-LSTM's extra regularisers expect the perplexities to sit
some points above the paper's.
"""
from ba_dist.config import ConfigError
from ba_dist.paper_tables import VARIANTS   # fixed_steps, fixed_samples, ba: as the image rows
from ba_dist.seq.config import base_config


def get_config(variant: str = "ba"):
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    M = 10
    c = base_config()
    c.task = "lm"
    c.input.dataset = "ptb"
    c.input.data_dir = ""             # directory of ptb.train.txt, ptb.valid.txt, ptb.test.txt
    c.input.batch_size = 20           # B unique streams
    c.input.bptt = 70
    c.input.eval_streams = 10
    c.input.test_streams = 1
    c.input.vocab_size = 10001        # PTB's own 10k (incl. <unk> and <eos>) + <pad>: keeps every word
    c.model.kwargs.embed_dim = 400
    c.model.kwargs.hidden = 1150
    c.model.kwargs.num_layers = 3
    c.model.kwargs.input_dropout = 0.4
    c.model.kwargs.hidden_dropout = 0.25
    c.model.kwargs.output_dropout = 0.4
    c.model.kwargs.tie_weights = True
    c.optim.name = "sgd"
    c.optim.base_lr = 30.0
    c.optim.clip_norm = 0.25
    c.optim.weight_decay = 1.2e-6
    c.train.epochs = 500
    c.train.verbose = 2
    c.eval.final_splits = "valid,test"
    if variant == "ba":
        c.ba.multiplicity = M         # 20 unique x 10 copies = 200 rows per step
        c.ba.m_ranks = 1
    elif variant == "fixed_samples":
        c.input.batch_size = M * 20   # as many sequences per step as BA, all distinct...
        c.train.epochs = M * 500      # ...and as many steps: 10x the epochs at 1/10 the steps per epoch
    return c
