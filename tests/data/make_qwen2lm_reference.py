"""Makes tests/data/qwen2lm_reference.npz: CosyVoice 2's text-to-token LM (cosyvoice/llm/llm.py
Qwen2LM over Qwen2Encoder, a transformers Qwen2ForCausalLM), narrowed, with random weights.

    git clone https://github.com/FunAudioLLM/CosyVoice /tmp/CosyVoice   # read at ace7c47
    pip install torch transformers
    PYTHONPATH=/tmp/CosyVoice python tests/data/make_qwen2lm_reference.py

The modules make_llm_reference.py stands in for are stood in for the same way. Qwen2Encoder
loads its Qwen2ForCausalLM with from_pretrained: a narrowed one is saved to a temporary
folder first.

The file holds the config (JSON: Qwen2LMConfig's fields, the Qwen2 ones under "llm"), the
state_dict under "sd/", and:
- "train/*": a padded batch of two rows through upstream's unistream packing
  (prepare_lm_input_target: [sos, text, task_id, speech] -> speech tokens and eos; the rows
  have fewer than three speech tokens per text token, so the bistream packing never applies),
  the LM and its decoder: the logits and the targets;
- "bistream/*": the same through upstream's bistream packing, for a row that interleaves 5 text
  and 15 speech tokens and one that is too short to;
- "zero_shot/*", "cross_lingual/*": Qwen2LM.inference of one text with a prompt (text and
  speech tokens) and without, sampling made deterministic (top_k 1, no repetition fallback):
  the tokens drawn and the log-probabilities each was drawn from (make_llm_reference's
  `inference`).
"""

import functools
import json
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, "tests/data")
from make_llm_reference import _stand_ins, inference, randomise  # noqa: E402

_stand_ins()

from cosyvoice.llm.llm import Qwen2Encoder, Qwen2LM  # noqa: E402
from cosyvoice.utils.common import ras_sampling  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

QWEN = dict(
    vocab_size=90,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
CONFIG = dict(llm=QWEN, speech_token_size=40, top_k=1, tau_r=2.0)


def build(folder):
    Qwen2ForCausalLM(Qwen2Config(**QWEN)).save_pretrained(folder)
    sampling = functools.partial(ras_sampling, top_p=0.8, top_k=CONFIG["top_k"], win_size=10, tau_r=CONFIG["tau_r"])
    model = Qwen2LM(
        QWEN["hidden_size"], QWEN["hidden_size"], CONFIG["speech_token_size"], Qwen2Encoder(folder), sampling
    )
    return model.eval()


def packed(model, out, name, text, text_len, speech, speech_len):
    """Upstream's prepare_lm_input_target of the rows, the LM and its decoder: the logits and the
    targets under name/."""
    with torch.no_grad():
        text_emb = model.llm.model.model.embed_tokens(text)
        sos = model.llm_embedding.weight[model.sos].reshape(1, 1, -1)
        task = model.llm_embedding.weight[model.task_id].reshape(1, 1, -1)
        # No instruction: given as empty, since upstream's own default is 896 wide (Qwen2-0.5B's).
        empty = (
            torch.zeros(2, 0, dtype=torch.long),
            torch.zeros(2, 0, QWEN["hidden_size"]),
            torch.zeros(2, dtype=torch.int32),
        )
        target, lm_input, lm_len = model.prepare_lm_input_target(
            sos, text, text_emb, text_len, task, speech, model.speech_embedding(speech), speech_len, *empty
        )
        logits = model.llm_decoder(model.llm(lm_input, lm_len)[0])
    out.update(
        {
            f"{name}/text": text.numpy(),
            f"{name}/text_len": text_len.numpy(),
            f"{name}/speech": speech.numpy(),
            f"{name}/speech_len": speech_len.numpy(),
            f"{name}/logits": logits.numpy(),
            f"{name}/target": target.numpy(),
            f"{name}/length": lm_len.numpy(),
        }
    )


def train(model, out):
    text = torch.randint(0, QWEN["vocab_size"], (2, 6))
    text_len = torch.tensor([6, 4], dtype=torch.int32)
    speech = torch.randint(0, CONFIG["speech_token_size"], (2, 9))
    speech_len = torch.tensor([7, 9], dtype=torch.int32)
    packed(model, out, "train", text, text_len, speech, speech_len)


def train_bistream(model, out):
    """The same through upstream's bistream packing (random.random stood in by 0: every row whose
    speech is over three times its text interleaves 5 text and 15 speech tokens); row 1 is not."""
    import random

    text = torch.randint(0, QWEN["vocab_size"], (2, 6))
    text_len = torch.tensor([6, 3], dtype=torch.int32)
    speech = torch.randint(0, CONFIG["speech_token_size"], (2, 25))
    speech_len = torch.tensor([25, 9], dtype=torch.int32)
    draw = random.random
    random.random = lambda: 0.0
    try:
        packed(model, out, "bistream", text, text_len, speech, speech_len)
    finally:
        random.random = draw


def attend_to_the_cache(encoder):
    """Qwen2Encoder.forward_one_step with the attention mask over the cache and the new tokens.
    Upstream passes the new tokens' mask alone (all ones), which the transformers it pins (4.51)
    reads as attending to the whole cache; transformers 5 masks the cache out instead."""
    one_step = encoder.forward_one_step

    def forward_one_step(xs, masks, cache=None):
        past = 0 if cache is None else cache.get_seq_length()
        return one_step(xs, torch.ones((1, xs.shape[1], past + xs.shape[1]), dtype=torch.bool), cache)

    encoder.forward_one_step = forward_one_step


def main():
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model = build(folder)
    attend_to_the_cache(model.llm)
    randomise(model, eos_bias=2.0, eos=CONFIG["speech_token_size"])
    with torch.no_grad():  # a fill token likely too: upstream ends a row by it even before the minimum
        model.llm_decoder.bias[CONFIG["speech_token_size"] + 1] += 0.3
    out = {"config": np.array(json.dumps(CONFIG))}
    out.update({f"sd/{k}": v.detach().numpy() for k, v in model.state_dict().items()})
    train(model, out)
    text = torch.randint(0, QWEN["vocab_size"], (1, 3), dtype=torch.int32)
    prompt_text = torch.randint(0, QWEN["vocab_size"], (1, 4), dtype=torch.int32)
    prompt_speech = torch.randint(0, CONFIG["speech_token_size"], (1, 5), dtype=torch.int32)
    none = torch.zeros(1, 0, dtype=torch.int32)
    no_speaker = torch.zeros(1, 0)  # taken and ignored, as the flow decoder has the x-vector
    inference(model, out, "zero_shot", text, prompt_text, prompt_speech, no_speaker)
    inference(model, out, "cross_lingual", text, none, none, no_speaker)
    train_bistream(model, out)
    path = "tests/data/qwen2lm_reference.npz"
    np.savez_compressed(path, **out)
    drawn = {name: len(out[f"{name}/tokens"]) for name in ("zero_shot", "cross_lingual")}
    print(f"wrote {path}: tokens drawn {drawn}")


if __name__ == "__main__":
    main()
