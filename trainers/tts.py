"""python -m trainers.tts CONFIG.yaml --workdir DIR --text "..." --prompt VOICE.wav [--prompt-text "..."] --out OUT.wav
   python -m trainers.tts --cosyvoice MODEL_DIR [--variant cosyvoice_300m] --text "..." \
       (--prompt VOICE.wav [--prompt-text "..."] | --spk2info spk2info.pt --speaker NAME [--instruct "..."]) \
       --out OUT.wav

Zero-shot text-to-speech with a tts run's checkpoint (its EMA weights when it has them):
the text is spoken in the voice of the prompt recording (a few seconds; WAV, or FLAC with
soundfile; resampled to 16 kHz), through the run's codec decoder. The model continues the
prompt, so it needs the prompt's transcript: --prompt-text, or, when omitted, the
transcript of the recogniser run in tts.recognizer_run. Sampling follows the config's
tts.temperature / top_k / top_p / guidance_scale (override them as dotted keys) with --seed.

With --cosyvoice, a released CosyVoice model speaks (jaxmodels.cosyvoice.pipeline; MODEL_DIR
holds llm.pt, flow.pt, hift.pt, the S3 tokenizer as the s3tokenizer package's
speech_tokenizer_v1.pt, 3D-Speaker's campplus_cn_common.bin and the text tokenizer's
.tiktoken ranks), as upstream's inference modes: zero-shot given the prompt's transcript,
cross-lingual without it (the LM sees no prompt), sft with a stored speaker's x-vector
(spk2info.pt of the -SFT model), instruct with it and an instruction (the -Instruct model).
The output is at the vocoder's rate (22.05 kHz; CosyVoice 2: 24 kHz).

With a cosyvoice_llm run (CONFIG.yaml --workdir DIR), the chain its config names speaks:
the run's LM, the S3 tokenizer, flow decoder and HiFT runs and the speaker embedder of
llm.s3tokenizer_run, flow_run, hift_run and speaker (configs/cosyvoice_speech.yaml):
zero-shot with --prompt-text, cross-lingual without; an LM trained with llm.instruct speaks
as --instruct asks ("fast speed, low pitch<|endofprompt|>") in the voice of --prompt's
x-vector (configs/cosyvoice_instruct_speech.yaml).
"""

import argparse
import sys

from trainers.cli import InputError, command


def _add_arguments(p, prompt_required=True):
    p.add_argument("--text", required=True, help="what to say")
    p.add_argument("--prompt", required=prompt_required, help="a recording of the voice")
    p.add_argument("--prompt-text", default=None, help="the prompt's transcript")
    p.add_argument("--out", required=True, help="output WAV")
    if prompt_required:
        p.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
        p.add_argument("--instruct", help="a cosyvoice_llm run trained with llm.instruct: how to speak")
    p.add_argument("--seed", type=int, default=0)


def cosyvoice(argv):
    parser = argparse.ArgumentParser(prog="python -m trainers.tts --cosyvoice", description=__doc__)
    parser.add_argument("--cosyvoice", required=True, help="a released CosyVoice model's directory")
    parser.add_argument("--variant", default="cosyvoice_300m", help="cosyvoice_300m, _300m_25hz or cosyvoice2")
    parser.add_argument("--spk2info", help="sft: the -SFT model's spk2info.pt")
    parser.add_argument("--speaker", help="sft: a speaker of --spk2info")
    parser.add_argument("--instruct", help="with --speaker: how to speak (the -Instruct model's instruction)")
    _add_arguments(parser, prompt_required=False)
    args = parser.parse_args(argv)
    if bool(args.prompt) == bool(args.speaker):
        parser.error("give --prompt VOICE.wav (zero-shot, cross-lingual) or --spk2info FILE --speaker NAME (sft)")
    import jax

    from jaxmodels.cosyvoice.pipeline import CosyVoice
    from trainers.data import speech

    try:
        voice = CosyVoice.load(args.cosyvoice, args.variant)
    except (OSError, ValueError) as e:
        raise InputError(str(e)) from None
    rng = jax.random.key(args.seed)
    if args.instruct and not args.speaker:
        parser.error("--instruct needs --spk2info FILE --speaker NAME")
    if args.speaker:
        xvector = _stored_xvector(args.spk2info, args.speaker)
        if args.instruct:
            audio, mode = voice.instruct(args.text, args.instruct, xvector, rng), f"instruct, speaker {args.speaker}"
        else:
            audio, mode = voice.sft(args.text, xvector, rng), f"sft, speaker {args.speaker}"
    else:
        audio, mode = _continue_prompt(voice, args, rng)
    speech.write_wav(args.out, audio, voice.sample_rate)
    print(f"{args.out}: {len(audio) / voice.sample_rate:.2f} s ({mode})")


def _continue_prompt(voice, args, rng):
    """(audio, mode) of a CosyVoice speaking --text in --prompt's voice: zero-shot with
    --prompt-text, cross-lingual without."""
    from trainers.tasks._cosyvoice import prompt_audio

    wav_16k, wav_out = prompt_audio(args.prompt, voice.sample_rate)
    if args.prompt_text is None:
        return voice.cross_lingual(args.text, wav_16k, wav_out, rng), "cross-lingual"
    return voice.zero_shot(args.text, args.prompt_text, wav_16k, wav_out, rng), "zero-shot"


def trained_cosyvoice(args, cfg):
    """A cosyvoice_llm run speaks through the chain its config names (llm.s3tokenizer_run,
    flow_run, hift_run, speaker): zero-shot with --prompt-text, cross-lingual without, or, an
    LM trained with instructions, as --instruct asks."""
    import jax

    from trainers.checkpoint import restore_run
    from trainers.config import ConfigError
    from trainers.data import speech
    from trainers.loop import Trainer

    if cfg.llm.instruct and not args.instruct:
        raise InputError(f"the LM of {args.config} was trained with instructions (llm.instruct): give --instruct")
    if args.instruct and not cfg.llm.instruct:
        raise InputError(f"the LM of {args.config} was not trained with instructions (llm.instruct): no --instruct")
    trainer = Trainer(cfg)
    step, state = restore_run(trainer, args.workdir, args.checkpoint)
    try:
        voice = trainer.task.voice(state.inference_params)
    except ConfigError as e:
        raise InputError(f"{args.config}: {e}") from None
    rng = jax.random.key(args.seed)
    if args.instruct:
        from trainers.tasks._cosyvoice import prompt_audio

        wav_16k, _ = prompt_audio(args.prompt, voice.sample_rate)
        audio, mode = voice.instruct(args.text, args.instruct, voice.xvector(wav_16k), rng), "instruct"
    else:
        audio, mode = _continue_prompt(voice, args, rng)
    speech.write_wav(args.out, audio, voice.sample_rate)
    print(f"{args.out}: {len(audio) / voice.sample_rate:.2f} s ({mode}, checkpoint {step})")


def _stored_xvector(path, name):
    """A speaker's x-vector from upstream's spk2info.pt ({speaker: {"embedding": (1, 192), ...}})."""
    if not path:
        raise InputError("--speaker needs --spk2info (the -SFT model's spk2info.pt)")
    import torch

    try:
        speakers = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"spk2info not found: {path}") from None
    if name not in speakers:
        raise InputError(f"speaker {name!r} is not in {path}; it has {', '.join(sorted(speakers))}")
    return speakers[name]["embedding"].float().numpy()


@command
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--cosyvoice" in argv or any(a.startswith("--cosyvoice=") for a in argv):
        return cosyvoice(argv)
    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line("python -m trainers.tts", __doc__, argv, _add_arguments)
    if cfg.task == "cosyvoice_llm":
        launch.initialize()
        return trained_cosyvoice(args, cfg)
    if cfg.task != "tts" or cfg.tts.condition != "text":
        sys.exit(f"{args.config}: speech synthesis needs a tts config conditioned on text, or a cosyvoice_llm one")
    if args.instruct:
        sys.exit("--instruct is for a cosyvoice_llm run trained with llm.instruct")
    launch.initialize()
    import jax

    from trainers.checkpoint import restore_run
    from trainers.data import speech
    from trainers.loop import Trainer

    trainer = Trainer(cfg)
    task = trainer.task
    try:
        prompt = task.read(args.prompt)
    except (ValueError, RuntimeError) as e:
        sys.exit(str(e))
    if not args.text.strip():
        sys.exit("--text is empty")
    prompt_text = args.prompt_text
    if prompt_text is None:
        if not cfg.tts.recognizer_run:
            sys.exit("give --prompt-text (the config names no tts.recognizer_run to transcribe the prompt)")
        from trainers.tasks.ctc import Recognizer

        prompt_text = Recognizer(cfg.tts.recognizer_run).transcribe([prompt])[0]
        print(f"prompt transcript: {prompt_text}")
    step, state = restore_run(trainer, args.workdir, args.checkpoint)
    (audio,) = task.synthesise(
        state.inference_params,
        task.text_ids([prompt_text]),
        task.text_ids([args.text]),
        [prompt],
        jax.random.PRNGKey(args.seed),
    )
    speech.write_wav(args.out, audio)
    print(f"{args.out}: {len(audio) / speech.SAMPLE_RATE:.2f} s (checkpoint {step})")


if __name__ == "__main__":
    main()
