"""python -m trainers.transcribe CONFIG.yaml --workdir DIR [dotted.key=value ...] [options] --audio A.wav [B.wav ...]
   python -m trainers.transcribe configs/sensevoice_small.yaml --weights model.pt [options] --audio A.wav ...

Transcribes audio files (WAV, or FLAC with soundfile; resampled to 16 kHz if need be)
with a CTC run's checkpoint (its EMA weights when it has them), the run's vocabulary,
feature statistics and language model (tokens.json, cmvn.npz, lm.arpa in DIR), or with
released weights and the files the config names (SenseVoice-Small: model.pt, its
SentencePiece model as speech.bpe_model, am.mvn as speech.cmvn_file), and prints each
file's text with the time span of every token, from a forced alignment of the decoded
text. Audio longer than data.max_seconds is cut in its silences and the pieces recognised
apart (their texts joined, their times offset); with --vad, FunASR's FSMN-VAD finds the
speech and its segments are merged as FunASR's merge_vad (silence outside them is not
read). A model with SenseVoice's prompts also gives its rich output as FunASR's: greedy
over every frame, "<|en|><|NEUTRAL|><|Speech|><|woitn|>three seven one", and the
language, emotion and event in it:

    a.wav   three seven one   [en NEUTRAL Speech]
      three  0.30-0.66 s
      ...
"""

import dataclasses
import json
import os
import sys

from trainers.cli import command

MIN_SAMPLES = 400  # one 25 ms frame: a shorter piece has nothing to recognise


def _add_arguments(p):
    p.add_argument("--audio", nargs="+", required=True, help="audio files")
    p.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
    p.add_argument("--decoder", choices=["beam", "greedy"], default="beam")
    p.add_argument("--language", default="auto", help="SenseVoice's language prompt: auto (detected), zh, en, ...")
    p.add_argument("--use_itn", action="store_true", help="SenseVoice: ask for punctuation and normalised text")
    p.add_argument("--ban_emo_unk", action="store_true", help="SenseVoice: never answer <|EMO_UNKNOWN|>")
    p.add_argument("--json", action="store_true", help="one JSON object per file instead of text")
    p.add_argument(
        "--vad",
        help="FunASR's fsmn-vad folder (model.pt, config.yaml, am.mvn): speech found by FSMN-VAD and merged into "
        "pieces of 15 s (merge_vad) instead of the energy detector's",
    )


def _pieces(audio, max_seconds: float, vad_dir: str | None) -> list:
    """(file index, first sample, samples) of the pieces recognised apart. Audio longer than
    max_seconds is cut in its silences (jaxmodels.asr.segments), as FunASR with a VAD; with
    vad_dir, FSMN-VAD's segments (none longer than max_seconds) merged as FunASR's merge_vad
    into pieces of at most 15 s."""
    import numpy as np

    from jaxmodels.asr import fsmn_vad, segments
    from trainers.data.speech import SAMPLE_RATE

    if vad_dir:
        longest = int(max_seconds * 1000)
        vad = fsmn_vad.load(vad_dir, max_single_segment_time=longest)
        ms = SAMPLE_RATE // 1000

        def spans(wav):
            merged = fsmn_vad.merge_segments(vad(wav), min(15000, longest))
            return [(a * ms, min(b * ms, len(wav))) for a, b in merged]

    else:

        def spans(wav):
            return segments(wav, SAMPLE_RATE, max_seconds)

    return [(i, a, np.asarray(wav[a:b])) for i, wav in enumerate(audio) for a, b in spans(wav) if b - a >= MIN_SAMPLES]


@command
def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line("python -m trainers.transcribe", __doc__, argv, _add_arguments, weights=True)
    if cfg.task != "ctc":
        sys.exit(f"{args.config}: task is {cfg.task!r}; transcription needs a ctc config")
    from jaxmodels.asr import LANGUAGE_QUERY

    if args.language not in LANGUAGE_QUERY:
        sys.exit(f"--language: unknown language {args.language!r}; valid: {', '.join(LANGUAGE_QUERY)}")
    if not args.weights:
        s = cfg.speech
        needed = ["tokens.json"] if s.tokens != "sentencepiece" else []
        reads_waveform = cfg.model.name.startswith(("hubert", "wav2vec2"))  # no filterbank statistics
        needed += ["cmvn.npz"] if not s.cmvn_file and not reads_waveform else []
        missing = [n for n in needed if not os.path.isfile(os.path.join(args.workdir, n))]
        if missing:
            sys.exit(f"{args.workdir} has no {' or '.join(missing)}: a run writes them at its first evaluation")
        cfg = dataclasses.replace(cfg, speech=dataclasses.replace(cfg.speech, assets=args.workdir))
    launch.initialize()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmodels.asr import funasr_timestamps, parse_rich, rich_greedy
    from jaxmodels.ctc import beam_search, forced_align, greedy_decode, paddings_from_lengths
    from trainers.checkpoint import restore_or_load
    from trainers.data import speech
    from trainers.loop import Trainer

    audio = []
    for path in args.audio:
        try:
            audio.append(speech.read_audio(path, speech.SAMPLE_RATE, resample=True))
        except (ValueError, RuntimeError) as e:
            sys.exit(str(e))
    trainer = Trainer(cfg)
    task = trainer.task
    step, state = restore_or_load(trainer, args.workdir, args.checkpoint, args.weights)
    params = state.inference_params
    s = cfg.speech
    banned = task.tokenizer.index.get("<|EMO_UNKNOWN|>") if args.ban_emo_unk else None
    # SenseVoice with its SentencePiece model: the words' times as FunASR's output_timestamp.
    word_times = s.prompts and task.tokenizer.unit == "sentencepiece"

    @jax.jit
    def decode(params, batch):
        logits, lengths = task.forward(params, batch, None, train=False)
        rich = rich_greedy(logits, lengths, banned) if s.prompts else None
        log_probs = jax.nn.log_softmax(logits) if word_times else None  # left on the device
        _, logits, paddings = task.split_outputs(logits, lengths)
        if args.decoder == "beam":
            best = beam_search(
                logits, paddings, s.beam_size, lm=task.lm, lm_weight=s.lm_weight, length_bonus=s.length_bonus
            )
            labels, count = best.labels[:, 0], best.lengths[:, 0]
        else:
            labels, label_paddings = greedy_decode(logits, paddings)
            count = jnp.sum(label_paddings < 0.5, axis=1)
        label_paddings = paddings_from_lengths(count, labels.shape[1])
        return labels, count, forced_align(logits, paddings, labels, label_paddings), rich, log_probs, lengths

    try:
        pieces = _pieces(audio, cfg.data.max_seconds, args.vad)
    except (OSError, ValueError) as e:
        sys.exit(f"--vad {args.vad}: {e}")

    def recognise(pieces):
        padded, lengths = speech.pad_waveforms([wav for _, _, wav in pieces])
        batch = {"audio": padded, "audio_length": lengths}
        if s.prompts:
            try:
                prompts = task.inference_prompts(args.language, args.use_itn)
            except ValueError as e:
                sys.exit(f"--language: {e}")
            batch["prompts"] = np.tile(np.array([prompts], np.int32), (len(pieces), 1))
        *outputs, log_probs, lengths = decode(params, batch)
        return (*jax.device_get(outputs), log_probs, np.asarray(lengths))

    no_speech = (None,) * 6  # --vad may find none
    labels, count, alignment, rich, log_probs, lengths = recognise(pieces) if pieces else no_speech
    seconds_per_frame = task.frame_seconds
    results = [{"file": path, "pieces": []} for path in args.audio]
    for j, (i, start, _) in enumerate(pieces):
        ids, offset = labels[j, : count[j]], start / speech.SAMPLE_RATE
        piece = {
            "start": round(offset, 2),
            "text": task.tokenizer.decode(ids),
            "tokens": [
                (
                    task.tokenizer.tokens[t],
                    round(offset + a * seconds_per_frame, 2),
                    round(offset + b * seconds_per_frame, 2),
                )
                for t, a, b in zip(ids, alignment.token_starts[j], alignment.token_ends[j])
            ],
        }
        if s.prompts:
            piece["rich"] = task.tokenizer.decode(rich[0][j][rich[1][j] < 0.5])
        if word_times:
            times, words = funasr_timestamps(log_probs[j, : lengths[j]], piece["rich"], task.tokenizer.processor)
            ms = round(1000 * offset)
            piece.update(timestamp=[[ms + a, ms + b] for a, b in times], words=words)
        results[i]["pieces"].append(piece)
    for result in results:
        pieces = result.pop("pieces")
        result["text"] = " ".join(p["text"] for p in pieces if p["text"])
        if s.prompts:  # the fields of the first piece that says them
            result["rich"] = " ".join(p["rich"] for p in pieces)
            parsed = [parse_rich(p["rich"]) for p in pieces]
            for k in ("language", "emotion", "event", "textnorm"):
                result[k] = next((f[k] for f in parsed if f[k]), "")
        result["weights" if args.weights else "step"] = args.weights or int(step)
        spans = [span for p in pieces for span in p["tokens"]]
        if word_times:
            result["timestamp"] = [t for p in pieces for t in p["timestamp"]]
            result["words"] = [w for p in pieces for w in p["words"]]
        if len(pieces) > 1:
            result["pieces"] = [{k: v for k, v in p.items() if k in ("start", "text", "rich")} for p in pieces]
        if args.json:
            print(json.dumps({**result, "tokens": [{"token": t, "start": a, "end": b} for t, a, b in spans]}))
        else:
            tags = f"\t[{result['language']} {result['emotion']} {result['event']}]" if s.prompts else ""
            print(f"{result['file']}\t{result['text']}{tags}")
            if word_times:
                spans = [(w, a / 1000, b / 1000) for w, (a, b) in zip(result["words"], result["timestamp"])]
            for t, a, b in spans:
                print(f"  {t}\t{a:.2f}-{b:.2f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
