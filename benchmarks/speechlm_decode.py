"""VALL-E AR decoding, KV-cached against re-running the full forward pass; and the train step.

    python benchmarks/speechlm_decode.py [--layers 4 --width 512 --heads 8 --batch 4 --new 100 --group-size 1]
                                         [--guidance-scale 2]
    python benchmarks/speechlm_decode.py --layers 12 --width 1024 --heads 16 --batch 16 --dtype bfloat16  # VALL-E

Decoding: greedy, with EOS held back so that both run exactly --new steps, on random
weights; the two must produce the same codes (checked). The cached decoder is
jaxmodels.speechlm.generate_ar (one prefill of text + prompt, then one cached step per
token in a while_loop). The baseline is what a model without a cache does: at every
step the full forward pass over the whole padded sequence (text + BOS + prompt + --new
slots: one compiled shape), reading the logits at the current position, also in one
jitted loop. Tokens/s = batch x new tokens / seconds. --guidance-scale also times the
cached decoder with classifier-free guidance (each row run with and without its text).

Train step: the tts task's jitted step (VALL-E AR + NAR losses, backward, AdamW) built
by the Trainer from configs/valle.yaml with these sizes, on one device, on a synthetic
batch of --frames codec frames and --text text bytes per utterance; step time,
utterances/s and FLOP/s (MFU on a known GPU).

With --torch, the same work in PyTorch on a model of the same sizes (VALL-E has no
official code): decoding with transformers' GPT-2 (`generate`, greedy, KV-cached; the
same layers, width, heads, FFN and vocabulary, prompted with as many tokens), and the
train step with two `nn.TransformerEncoder` stacks (pre-LN, GELU) as the AR (causal)
and NAR (bidirectional) models over text + frames, cross-entropy on the frames, AdamW,
autocast to --dtype.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import device_time_by_op, report_flops, time_it  # noqa: E402


def torch_reference(args, vocab, codebook_size):
    """Seconds of greedy KV-cached decoding and of one train step, in PyTorch, at the same sizes."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    b, t, pr, n, d = args.batch, args.text, args.prompt, args.new, args.width
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=t + 1 + pr + n,
        n_embd=d,
        n_layer=args.layers,
        n_head=args.heads,
        n_inner=4 * d,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=None,
    )
    lm = transformers.GPT2LMHeadModel(config).to(device, dtype).eval()
    prompt = torch.randint(0, vocab, (b, t + 1 + pr), device=device)

    def decode():
        with torch.no_grad():
            out = lm.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        assert out.shape[1] == t + 1 + pr + n
        if device == "cuda":
            torch.cuda.synchronize()

    t_decode = time_it(decode, args.iters, warmup=1)
    lm = None  # freed before the train step

    def stack():
        layer = torch.nn.TransformerEncoderLayer(
            d, args.heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        return torch.nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text, self.audio = torch.nn.Embedding(256, d), torch.nn.Embedding(codebook_size + 2, d)
            self.ar, self.nar = stack(), stack()
            self.ar_head, self.nar_head = torch.nn.Linear(d, codebook_size + 1), torch.nn.Linear(d, codebook_size)

        def forward(self, text, codes):
            x = torch.cat([self.text(text), self.audio(codes)], 1)
            length = x.shape[1]
            causal = torch.nn.Transformer.generate_square_subsequent_mask(length, device=x.device)
            ar = self.ar_head(self.ar(x, mask=causal, is_causal=True)[:, t:])
            nar = self.nar_head(self.nar(x)[:, t:])
            return torch.nn.functional.cross_entropy(
                ar.flatten(0, 1).float(), codes.flatten()
            ) + torch.nn.functional.cross_entropy(nar.flatten(0, 1).float(), codes.flatten())

    model = Model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    text = torch.randint(1, 256, (b, t), device=device)
    codes = torch.randint(0, codebook_size, (b, args.frames), device=device)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(text, codes)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return t_decode, time_it(train_step, args.iters)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text", type=int, default=64, help="text bytes")
    p.add_argument("--prompt", type=int, default=150, help="prompt frames (2 s at 75 Hz)")
    p.add_argument("--new", type=int, default=100, help="frames generated")
    p.add_argument("--frames", type=int, default=300, help="train step: frames per utterance")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--group-size", type=int, default=1, help="codes per AR position (VALL-E 2's grouped codes)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="also time cached decoding with classifier-free guidance at this scale",
    )
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--torch", action="store_true", help="also time PyTorch on a model of the same sizes")
    p.add_argument("--profile", action="store_true", help="list the train step's costliest device ops")
    args = p.parse_args()
    g = args.group_size
    if args.prompt % g or args.new % g:
        p.error(f"--prompt and --new must be multiples of --group-size {g}")

    import jax
    import jax.numpy as jnp

    from jaxmodels import speechlm
    from trainers import config as config_lib
    from trainers.loop import Trainer

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    sizes = dict(
        num_layers=args.layers, d_model=args.width, nhead=args.heads, dim_feedforward=4 * args.width, group_size=g
    )
    model = speechlm.create("valle_ar", **sizes, dropout=0.0, dtype=jnp.dtype(args.dtype))
    rng = np.random.default_rng(0)
    b, t, pr, n = args.batch, args.text, args.prompt, args.new
    text = jnp.asarray(rng.integers(1, 256, (b, t)), jnp.int32)
    prompt = jnp.asarray(rng.integers(0, model.codebook_size, (b, pr)), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), *model.example()[0], **model.example()[1])["params"]
    print(
        f"VALL-E AR {args.layers} x {args.width}, {args.heads} heads: {speechlm.param_count(model):,} parameters; "
        f"batch {b}, text {t}, prompt {pr}, {n} new frames, {g} per step, {args.dtype}"
    )

    def cached(guidance_scale=1.0):
        codes, _ = speechlm.generate_ar(
            model,
            params,
            text,
            jnp.full(b, t),
            prompt,
            jnp.full(b, pr),
            jax.random.PRNGKey(0),
            max_new_tokens=n,
            min_new_tokens=n,
            temperature=0.0,
            guidance_scale=guidance_scale,
        )
        return jax.block_until_ready(codes)

    @jax.jit
    def full(params, text, prompt):
        groups = (g + pr + n) // g
        audio = jnp.concatenate([jnp.full((b, g), model.bos, jnp.int32), prompt, jnp.zeros((b, n), jnp.int32)], 1)
        positions = jnp.broadcast_to(jnp.arange(groups), (b, groups))
        text_valid = jnp.ones(text.shape, bool)

        def step(i, audio):
            valid = positions <= pr // g + i  # the groups so far; later ones are masked out
            logits = model.apply({"params": params}, audio, positions, valid, text=text, text_valid=text_valid)
            nxt = jnp.argmax(
                jax.lax.dynamic_slice_in_dim(logits, pr + i * g, g, 1).at[..., model.eos].set(-jnp.inf), -1
            )
            return jax.lax.dynamic_update_slice_in_dim(audio, nxt.astype(jnp.int32), g + pr + i * g, 1)

        return jax.lax.fori_loop(0, n // g, step, audio)[:, g + pr :]

    def baseline():
        return jax.block_until_ready(full(params, text, prompt))

    same = np.array_equal(np.asarray(cached()), np.asarray(baseline()))
    t_cached, t_full = time_it(cached, args.iters, warmup=1), time_it(baseline, args.iters, warmup=1)
    print(
        f"decoding: cached {t_cached * 1e3:.1f} ms ({b * n / t_cached:.0f} tokens/s), full forward "
        f"{t_full * 1e3:.1f} ms ({b * n / t_full:.0f} tokens/s): cached {t_full / t_cached:.1f}x faster; "
        f"same codes: {same}"
    )
    if args.guidance_scale != 1.0:
        t_guided = time_it(lambda: cached(args.guidance_scale), args.iters, warmup=1)
        print(
            f"guided decoding (scale {args.guidance_scale}: each row also run without its text): "
            f"{t_guided * 1e3:.1f} ms ({b * n / t_guided:.0f} tokens/s), {t_guided / t_cached:.2f}x the unguided time"
        )

    overrides = [
        f"model.args={sizes}",
        f"data.batch_size={b}",
        "mesh.data=1",
        f"tts.max_frames={args.frames}",
        f"tts.max_text_length={t}",
        f"train.compute_dtype={args.dtype}",
    ]
    trainer = Trainer(
        config_lib.load(os.path.join(os.path.dirname(__file__), "..", "configs", "valle.yaml"), overrides),
        devices=[device],
    )
    state = trainer.init(0)
    batch = trainer.task.example_batch(b)
    batch.update(
        text=rng.integers(1, 256, batch["text"].shape).astype(np.int32),
        text_length=np.full(b, t, np.int32),
        codes=rng.integers(0, model.codebook_size, batch["codes"].shape).astype(np.int32),
    )
    batch = {k: jax.device_put(v, trainer.batch_shardings[k]) for k, v in batch.items()}
    holder = [state]

    def train_step():
        holder[0], metrics = trainer.train_step(holder[0], batch)
        jax.block_until_ready(metrics)

    with trainer.context():
        lowered = trainer.train_step.lower(state, batch)
        seconds = time_it(train_step, args.iters)
    print(
        f"train step (AR + NAR, AdamW), batch {b} x {args.frames} frames: {seconds * 1e3:.1f} ms, "
        f"{b / seconds:.1f} utterances/s"
    )
    report_flops(lowered, seconds, device)
    if args.profile:
        with trainer.context():
            device_time_by_op(train_step)
    if args.torch:
        torch_decode, torch_train = torch_reference(args, 256 + model.codebook_size + 2, model.codebook_size)
        print(
            f"torch, same sizes: decoding {torch_decode * 1e3:.1f} ms ({b * n / torch_decode:.0f} tokens/s), "
            f"torch/jax (cached) {torch_decode / t_cached:.2f}x; train step {torch_train * 1e3:.1f} ms "
            f"({b / torch_train:.1f} utterances/s), torch/jax {torch_train / seconds:.2f}x"
        )


if __name__ == "__main__":
    main()
