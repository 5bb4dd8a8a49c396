"""What a model makes of a dataset, written at scale: the latents of an image folder through the
Stable Diffusion VAE (for a latent diffusion model), or the units or features of a speech
corpus through a self-supervised encoder.

    python -m trainers.extract vae CONFIG.yaml --images ROOT --workdir DIR [--splits train] [--flip]
    python -m trainers.extract units CONFIG.yaml --encoder PATH --layer L --workdir DIR \
        [--clusters K | --tokenizer TOKENIZER.npz | --features] [--splits train,test]
    python -m trainers.extract codes CONFIG.yaml --codec RUN_OR_WEIGHTS [--codec_model NAME] --workdir DIR
    python -m trainers.extract s3tokens CONFIG.yaml --s3tokenizer WEIGHTS [--s3tokenizer_model NAME] --workdir DIR
    python -m trainers.extract xvectors CONFIG.yaml (--campplus WEIGHTS | --speaker SPEAKER.npz) --workdir DIR

vae:
ROOT/<split>/<class>/<image> (the ImageNet layout) -> DIR/<split>/: the VAE's posterior
mean of each image times its scaling factor (0.18215), as the model trains on them
(configs/dit_xl2_imagenet256.yaml: data.source latents, data.path DIR). Images are
resized and centre-cropped to the model's input size x 8 as DiT's train.py
(center_crop_arr: halved with a box filter while twice the size, then bicubic); with
--flip each image also gives the latent of its mirror image (fast-DiT's recipe, a fixed
copy for DiT's random flip). The VAE is diffusion.vae (or --vae).

units: the utterances of the config's corpus (data.source, data.path, its splits) -> DIR/<split>/:
hidden state L of a HuBERT, wav2vec 2.0 or w2v-BERT 2.0 encoder (--encoder: a transformers weights
file with its config.json, or a hubert or wav2vec2 run's directory; w2v-BERT reads
SeamlessM4TFeatureExtractor's features, computed here; --layer avg: the mean of all of them,
SpeechTokenizer's distillation target, with --features), each utterance alone as it would be
unbatched (ssl's norm_valid_frames), as k-means units of a tokenizer: fitted with --clusters
on the first --fit_utterances of the first split and saved as DIR/tokenizer.npz (the format
trainers.data.semantic reads; a run started again reuses it), or given (--tokenizer); with
--features, the hidden states themselves (float16). Shards hold the utterances' frames one
after another (`units` or `features`), `lengths` (frames per utterance) and `indices`.

codes: the same utterances -> DIR/<split>/: every codebook's codes of a codec (--codec: a codec
run's directory, or EnCodec / SpeechTokenizer weights with --codec_model as trainers.compress
takes them), (frames, n_q) int16 per utterance at the codec's rate. The batch pads each
utterance with zeros, which the last frames of a non-causal codec see (upstream encodes each
file alone).

s3tokens: the same utterances -> DIR/<split>/: CosyVoice's supervised semantic tokens (`units`) of a
released S3 tokenizer (--s3tokenizer: the s3tokenizer package's state_dict, .pt or .safetensors;
--s3tokenizer_model: speech_tokenizer_v1, speech_tokenizer_v1_25hz or speech_tokenizer_v2_25hz),
as CosyVoice's tools/extract_speech_token.py makes them for its LM and flow (audio past 30 s in
the package's overlapping windows); or of a ctc run trained with the quantizer inside
(--s3tokenizer: its directory), one token a frame of its front end.

xvectors: the same utterances -> DIR/<split>/: one speaker embedding per utterance (`features`,
one frame each): CAM++'s as CosyVoice's tools/extract_embedding.py makes them (--campplus:
3D-Speaker's weights, campplus_cn_common.bin; 192 wide, what CosyVoice's released models read),
or the unit-length one of a speaker embedder (--speaker: python -m trainers.speaker makes one).

Every device of every process encodes: each process takes its rows of each global batch and
writes its own shard files (`p<process>_s<shard>_<what>.npy`, each row's index in the split
last); `index.json` lists them when the split is complete. A killed run started again skips
the shards every process has written.
"""

import functools
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from trainers.cli import InputError, command

KINDS = ("vae", "units", "codes", "s3tokens", "xvectors")


def center_crop_arr(path: str, size: int) -> np.ndarray:
    """ADM's (and DiT's) centre crop of an image file to size x size, uint8 RGB."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except Exception as e:  # PIL raises many types for a broken file
        raise InputError(f"cannot read image {path}: {e}") from e
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def write_shards(out_dir, rows_total, batch_size, shard_batches, mesh, batch_outputs, what, description):
    """Each process's outputs of its rows of every global batch into its shard files, `what`
    naming them (the rows' indices last: a shard is done when they are written); shards every
    process has already written are skipped. Returns (on process 0; None elsewhere) the listing
    [{"prefix", "rows"}] of all shards. batch_outputs(rows) -> {name: array} of this process's
    rows of one global batch (rows past rows_total are the last batch's padding)."""
    import jax
    from jax.experimental import multihost_utils

    from trainers import files, sharding
    from trainers.progress import progress

    os.makedirs(out_dir, exist_ok=True)
    start, stop = sharding.local_batch_rows(mesh, batch_size)
    process = jax.process_index()
    batches = -(-rows_total // batch_size)
    shards = range(-(-batches // shard_batches))
    name = lambda s, what: os.path.join(out_dir, f"p{process}_s{s:05d}_{what}.npy")  # noqa: E731
    # A shard is done when every process has it (each sees only its own files on its own disk).
    have = np.array([os.path.isfile(name(s, what[-1])) for s in shards])
    done = multihost_utils.process_allgather(have).reshape(-1, len(shards)).all(0)
    todo = [s for s in shards if not done[s]]
    for s in progress(todo, len(todo), description):
        parts = {w: [] for w in what}
        for b in range(s * shard_batches, min((s + 1) * shard_batches, batches)):
            for w, value in batch_outputs(np.arange(b * batch_size + start, b * batch_size + stop)).items():
                parts[w].append(value)
        for w in what:
            files.write_npy(name(s, w), np.concatenate(parts[w]))
    multihost_utils.sync_global_devices(f"{description} written")
    if process != 0:
        return None
    return [
        {"prefix": f"p{p}_s{s:05d}", "rows": len(np.load(os.path.join(out_dir, f"p{p}_s{s:05d}_{what[-1]}.npy")))}
        for s in shards
        for p in range(jax.process_count())
    ]


def local_rows(view):
    """This process's rows of a batch-sharded global array, in order."""
    return np.concatenate([np.asarray(piece.data) for piece in sorted(view.addressable_shards, key=_row)])


def extract_split(images_root, out_dir, autoencoder, variables, mesh, size, flip, batch_size, shard_batches, workers):
    """One split's latents into out_dir (see the module's docstring)."""
    import jax

    from trainers import files, sharding
    from trainers.data.images import ImageFolderSource

    source = ImageFolderSource(images_root)
    batch = sharding.batch_sharding(mesh, 4)

    def encode(v, images):
        """The scaled posterior means of the images (and of their mirrors), each split as the batch."""
        x = images.astype(np.float32) / 127.5 - 1.0
        views = (x, x[:, :, ::-1]) if flip else (x,)
        return tuple(autoencoder.apply(v, view, method="encode")[0] * autoencoder.scaling_factor for view in views)

    encode = jax.jit(encode, in_shardings=(None, batch), out_shardings=batch)
    pool = ThreadPoolExecutor(workers)

    def latents(rows):
        real = rows[rows < len(source)]
        pixels = list(pool.map(lambda i: center_crop_arr(source[i]["path"], size), real))
        pixels += [np.zeros((size, size, 3), np.uint8)] * (len(rows) - len(real))  # the last batch's padding
        views = encode(variables, sharding.to_global(mesh, {"x": np.stack(pixels)}, batch_size)["x"])
        labels = np.array([source[i]["label"] for i in real], np.int32)
        return {
            "latents": np.concatenate([local_rows(view)[: len(real)] for view in views]),
            "labels": np.tile(labels, len(views)),
            "indices": np.tile(real, len(views)),
        }

    what = ("latents", "labels", "indices")
    listing = write_shards(
        out_dir, len(source), batch_size, shard_batches, mesh, latents, what, f"VAE latents of {images_root}"
    )
    pool.shutdown()
    if listing is None:
        return None
    index = {"shards": listing, "num_classes": source.num_classes, "flip": flip, "image_size": size}
    files.write_text(os.path.join(out_dir, "index.json"), json.dumps(index, indent=1) + "\n")
    return sum(item["rows"] for item in listing)


STORED = {"units": None, "features": np.float16, "codes": np.int16}  # what is written, in which dtype


def extract_units(source, out_dir, encode, mesh, batch_size, shard_batches, resample, what: str, meta: dict, rate):
    """One split's units, features or codes into out_dir (see the module's docstring), of audio
    at `rate` Hz. encode(audio, lengths) -> (per-frame values (B, T', ...), frames (B,)), batch-sharded."""
    from trainers import files, sharding
    from trainers.data import speech

    def units(rows):
        real = rows[rows < len(source)]
        waves = [speech.read_audio(source[i]["source"], rate, resample=resample) for i in real]
        longest = max([len(w) for w in waves], default=1)
        # One compiled shape per second of the batch's longest utterance.
        length = -(-longest // rate) * rate
        audio, lengths = speech.pad_waveforms(waves + [np.zeros(1, np.float32)] * (len(rows) - len(real)), length)
        batch = sharding.to_global(mesh, {"audio": audio, "lengths": lengths}, batch_size)
        values, frames = encode(batch["audio"], batch["lengths"])
        values, frames = local_rows(values)[: len(real)], local_rows(frames)[: len(real)]
        values = values.astype(STORED[what] or values.dtype)
        empty = np.zeros((0,) + values.shape[2:], values.dtype)
        return {
            what: np.concatenate([empty] + [v[:n] for v, n in zip(values, frames)]),
            "lengths": frames.astype(np.int32),
            "indices": real,
        }

    listing = write_shards(
        out_dir,
        len(source),
        batch_size,
        shard_batches,
        mesh,
        units,
        (what, "lengths", "indices"),
        f"{what} of {out_dir}",
    )
    if listing is None:
        return None
    keys = [record["key"] for record in source.records]
    index = {"shards": listing, "what": what, **meta, "keys": keys}
    files.write_text(os.path.join(out_dir, "index.json"), json.dumps(index) + "\n")
    return sum(item["rows"] for item in listing)


def extract_splits(args, cfg, encode, mesh, what: str, meta: dict, rate):
    """extract_units of each of --splits of the config's corpus into --workdir/<split>, with
    encode jitted batch-sharded over the mesh."""
    import jax

    from trainers import sharding
    from trainers.data import speech

    batch = sharding.batch_sharding(mesh)
    encode = jax.jit(encode, in_shardings=(sharding.batch_sharding(mesh, 2), batch), out_shardings=batch)
    for split in args.splits.split(","):
        out_dir = os.path.join(args.workdir, split)
        n = extract_units(
            speech.SpeechSource(cfg, split),
            out_dir,
            encode,
            mesh,
            args.batch_size,
            args.shard_batches,
            cfg.data.resample,
            what,
            meta,
            rate,
        )
        if jax.process_index() == 0:
            print(f"wrote the {what} of {n} utterances to {out_dir}", flush=True)


def _row(shard):
    return shard.index[0].start or 0


def vae_latents(args, cfg):
    import jax

    from jaxmodels import vae
    from trainers import sharding

    if not args.images:
        raise InputError("give --images: the image root (<split>/<class>/<image>)")
    path = args.vae or cfg.diffusion.vae
    if not path:
        raise InputError("give --vae (or diffusion.vae): the VAE's weights")
    autoencoder, variables = vae.load_pretrained(path)
    size = cfg.model.args.get("input_size", 32) * 2 ** (len(autoencoder.block_out_channels) - 1)
    mesh = sharding.make_mesh(data=-1)
    if args.batch_size % mesh.size:
        raise InputError(f"--batch_size {args.batch_size} must be a multiple of the {mesh.size} devices")
    for split in args.splits.split(","):
        n = extract_split(
            os.path.join(args.images, split),
            os.path.join(args.workdir, split),
            autoencoder,
            variables,
            mesh,
            size,
            args.flip,
            args.batch_size,
            args.shard_batches,
            args.workers,
        )
        if jax.process_index() == 0:
            print(f"wrote {n} latents of {split} ({size} x {size} images) to {args.workdir}/{split}", flush=True)


def tokenizer_centroids(args, cfg, splits, frame_rate: float):
    """The k-means centroids of --tokenizer, or of DIR/tokenizer.npz (fitted now with --clusters
    unless it was, with these settings)."""
    import jax

    from trainers.data import speech
    from trainers.data.semantic import SemanticTokenizer

    if args.tokenizer:
        return SemanticTokenizer.load(args.tokenizer).centroids
    if not args.clusters:
        raise InputError("give --clusters K (a k-means fitted now), --tokenizer PATH or --features")
    path = os.path.join(args.workdir, "tokenizer.npz")
    settings = {"features": "hubert", "frame_rate": frame_rate, "encoder": args.encoder, "layer": args.layer}
    if os.path.isfile(path):
        tokenizer = SemanticTokenizer.load(path)
        same = all(getattr(tokenizer, k) == v for k, v in settings.items())
        if same and len(tokenizer.centroids) == args.clusters:
            return tokenizer.centroids
    records = speech.SpeechSource(cfg, splits[0]).records[: args.fit_utterances]
    print(f"fitting {args.clusters} clusters on layer {args.layer} of {len(records)} utterances", flush=True)
    waves = [speech.read_audio(r["source"], resample=cfg.data.resample) for r in records]
    tokenizer = SemanticTokenizer(None, **settings).fit(waves, args.clusters, cfg.seed)
    if jax.process_index() == 0:  # every process fits the same centroids
        os.makedirs(args.workdir, exist_ok=True)
        tokenizer.save(path)
    return tokenizer.centroids


def speech_units(args, cfg):
    import jax.numpy as jnp

    from jaxmodels import speechlm
    from trainers import sharding
    from trainers.data import speech
    from trainers.tasks._pretraining import UnitEncoder

    if not args.encoder:
        raise InputError("give --encoder: a transformers weights file or a hubert or wav2vec2 run")
    encoder = UnitEncoder(args.encoder)
    if args.layer == "avg" and not args.features:
        raise InputError("--layer avg (the mean of all hidden states) is for --features, not units")
    if args.layer != "avg" and not 0 <= args.layer <= encoder.layers:
        raise InputError(f"--layer {args.layer}: the encoder has hidden states 0..{encoder.layers}")
    splits = args.splits.split(",")
    frame_rate = encoder.frame_rate
    centroids = None if args.features else tokenizer_centroids(args, cfg, splits, frame_rate)
    mesh = sharding.make_mesh(data=-1)
    if args.batch_size % mesh.size:
        raise InputError(f"--batch_size {args.batch_size} must be a multiple of the {mesh.size} devices")

    def encode(audio, lengths):
        states, frames = encoder(audio, lengths)
        states = jnp.mean(jnp.stack(states), axis=0) if args.layer == "avg" else states[args.layer]
        if centroids is None:
            return states, frames
        valid = jnp.arange(states.shape[1])[None] < frames[:, None]
        return speechlm.tokenize(states, valid, centroids)[0], frames

    meta = {"encoder": args.encoder, "layer": args.layer, "frame_rate": frame_rate}
    if centroids is not None:
        meta["clusters"] = len(centroids)
        meta["tokenizer"] = os.path.abspath(args.tokenizer or os.path.join(args.workdir, "tokenizer.npz"))
    what = "features" if args.features else "units"
    extract_splits(args, cfg, encode, mesh, what, meta, speech.SAMPLE_RATE)


def codec_codes(args, cfg):
    from jaxmodels.codec import Encodec, quantization
    from trainers import sharding
    from trainers.tasks.codec import load_codec

    if not args.codec:
        raise InputError("give --codec: a codec run's directory or a codec weights file (with --codec_model)")
    codec = load_codec(args.codec, args.codec_model)
    c = codec.config
    if c.channels != 1 or c.segment is not None or c.normalize:
        raise InputError(f"--codec {args.codec}: codes are written for mono codecs without segments or normalisation")
    mesh = sharding.make_mesh(data=-1)
    if args.batch_size % mesh.size:
        raise InputError(f"--batch_size {args.batch_size} must be a multiple of the {mesh.size} devices")

    def encode(audio, lengths):
        emb = codec.model.apply({"params": codec.params}, audio[..., None], method=Encodec.encode_latent)
        codes = quantization.encode(codec.codebooks["embed"], emb, c.n_q)
        return codes.transpose(1, 2, 0), -(-lengths // c.hop_length)

    meta = {"codec": args.codec, "codec_model": args.codec_model, "frame_rate": c.frame_rate, "bins": c.bins}
    meta["sample_rate"] = c.sample_rate
    extract_splits(args, cfg, encode, mesh, "codes", meta, c.sample_rate)


def s3_tokens(args, cfg):
    from jaxmodels.cosyvoice import s3tokenizer
    from trainers import sharding
    from trainers.data import speech

    if not args.s3tokenizer:
        raise InputError("give --s3tokenizer: a released S3 tokenizer's weights or a ctc run trained with one")
    meta = {"s3tokenizer": args.s3tokenizer}
    if os.path.isdir(args.s3tokenizer):  # a recogniser trained with the quantizer inside
        from trainers.tasks.ctc import Recognizer

        recogniser = Recognizer(args.s3tokenizer)
        if not recogniser.task.quantizer:
            raise InputError(
                f"--s3tokenizer {args.s3tokenizer}: the recogniser has no S3 quantizer "
                "(model.args.encoder_conf.quantizer_layer)"
            )
        encode = functools.partial(recogniser.task.s3_tokens, recogniser.params)
        meta.update(frame_rate=recogniser.frame_rate, clusters=recogniser.task.model.encoder_conf["codebook_size"])
    else:
        model, variables = s3tokenizer.load(args.s3tokenizer, args.s3tokenizer_model)
        encode = functools.partial(s3tokenizer.tokenize, model, variables)
        meta.update(s3tokenizer_model=args.s3tokenizer_model, frame_rate=model.config.token_rate)
        meta["clusters"] = model.config.n_codebook_size
    mesh = sharding.make_mesh(data=-1)
    if args.batch_size % mesh.size:
        raise InputError(f"--batch_size {args.batch_size} must be a multiple of the {mesh.size} devices")
    extract_splits(args, cfg, encode, mesh, "units", meta, speech.SAMPLE_RATE)


def speaker_xvectors(args, cfg):
    import jax.numpy as jnp

    from jaxmodels.cosyvoice import campplus
    from trainers import sharding
    from trainers.data import speech
    from trainers.speaker import SpeakerEmbedder

    if bool(args.speaker) == bool(args.campplus):
        raise InputError(
            "give one of --campplus (CAM++'s weights, campplus_cn_common.bin) and --speaker (a speaker embedder: "
            "python -m trainers.speaker CONFIG --out SPEAKER.npz)"
        )
    if args.campplus:
        model, variables = campplus.load(args.campplus, args.campplus_model)
        embed = functools.partial(campplus.embed, model, variables)
        meta = {"campplus": args.campplus, "campplus_model": args.campplus_model}
    else:
        embedder = SpeakerEmbedder.load(args.speaker)
        embed = functools.partial(embedder.embed, embedder.params)
        meta = {"speaker": args.speaker}
    mesh = sharding.make_mesh(data=-1)
    if args.batch_size % mesh.size:
        raise InputError(f"--batch_size {args.batch_size} must be a multiple of the {mesh.size} devices")

    def encode(audio, lengths):
        return embed(audio, lengths)[:, None], jnp.ones(lengths.shape, jnp.int32)

    meta["frame_rate"] = 0.0
    extract_splits(args, cfg, encode, mesh, "features", meta, speech.SAMPLE_RATE)


@command
def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    def add_arguments(p):
        p.add_argument("--images", help="vae: image root: <split>/<class>/<image>")
        p.add_argument("--splits", default="train", help="comma-separated splits (vae: under --images)")
        p.add_argument("--vae", help="vae: the VAE's weights (default: diffusion.vae)")
        p.add_argument("--flip", action="store_true", help="vae: also the latents of the mirrored images")
        p.add_argument("--encoder", help="units: a transformers weights file, or a hubert or wav2vec2 run")
        p.add_argument(
            "--layer",
            type=lambda v: v if v == "avg" else int(v),
            default=6,
            help="units: the hidden state (0: the encoder's input), or avg: their mean (SpeechTokenizer's teacher)",
        )
        p.add_argument("--clusters", type=int, default=0, help="units: k-means clusters fitted on the first split")
        p.add_argument("--fit_utterances", type=int, default=1000, help="units: utterances the k-means is fitted on")
        p.add_argument("--tokenizer", help="units: a saved tokenizer (.npz) instead of --clusters")
        p.add_argument("--features", action="store_true", help="units: the hidden states, not units")
        p.add_argument("--codec", help="codes: a codec run's directory, or codec weights (with --codec_model)")
        p.add_argument("--codec_model", default="encodec_24khz", help="codes: the weights' config (trainers.compress)")
        p.add_argument("--s3tokenizer", help="s3tokens: a released S3 tokenizer's weights, or a ctc run with one")
        p.add_argument("--s3tokenizer_model", default="speech_tokenizer_v1", help="s3tokens: its configuration")
        p.add_argument("--campplus", help="xvectors: CAM++'s weights (3D-Speaker's campplus_cn_common.bin)")
        p.add_argument("--campplus_model", default="campplus_192", help="xvectors: CAM++'s configuration")
        p.add_argument("--speaker", help="xvectors: a speaker embedder (.npz of python -m trainers.speaker)")
        p.add_argument("--batch_size", type=int, default=256, help="items per step over all devices")
        p.add_argument("--shard_batches", type=int, default=100, help="steps per shard file (the unit of resuming)")
        p.add_argument("--workers", type=int, default=8, help="vae: threads decoding images in each process")

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in KINDS:
        sys.exit(f"usage: python -m trainers.extract {{{','.join(KINDS)}}} CONFIG.yaml --workdir DIR ...")
    kind, argv = argv[0], argv[1:]
    args, cfg = parse_command_line("python -m trainers.extract", __doc__, argv, add_arguments)
    launch.initialize()
    kinds = {"vae": vae_latents, "units": speech_units, "codes": codec_codes}
    kinds.update(s3tokens=s3_tokens, xvectors=speaker_xvectors)
    kinds[kind](args, cfg)


if __name__ == "__main__":
    main()
