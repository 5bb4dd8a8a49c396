"""python -m trainers.tts CONFIG.yaml --workdir DIR --text "..." --prompt VOICE.wav [--prompt-text "..."] --out OUT.wav

Zero-shot text-to-speech with a tts run's checkpoint (its EMA weights when it has them):
the text is spoken in the voice of the prompt recording (a few seconds; WAV, or FLAC with
soundfile; resampled to 16 kHz), through the run's codec decoder. The model continues the
prompt, so it needs the prompt's transcript: --prompt-text, or, when omitted, the
transcript of the recogniser run in tts.recognizer_run. Sampling follows the config's
tts.temperature / top_k / top_p / guidance_scale (override them as dotted keys) with --seed.
"""

import sys

from trainers.cli import command


def _add_arguments(p):
    p.add_argument("--text", required=True, help="what to say")
    p.add_argument("--prompt", required=True, help="a recording of the voice")
    p.add_argument("--prompt-text", default=None, help="the prompt's transcript")
    p.add_argument("--out", required=True, help="output WAV (16 kHz)")
    p.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
    p.add_argument("--seed", type=int, default=0)


@command
def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line("python -m trainers.tts", __doc__, argv, _add_arguments)
    if cfg.task != "tts" or cfg.tts.condition != "text":
        sys.exit(f"{args.config}: speech synthesis needs a tts config conditioned on text")
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
