"""Zero-shot synthesis: speaking a text in a prompt's voice, and the held-out sentences spoken at
each evaluation."""

from __future__ import annotations

import jax
import numpy as np

from jaxmodels import speechlm
from trainers import sharding
from trainers.data import speech
from trainers.tasks import _waveform


class Synthesis:
    """Speech from a TTSTask's params."""

    # -- zero-shot TTS ----------------------------------------------------------------------
    def prompt_pairs(self):
        return speech.prompt_pairs(speech.SpeechSource(self.cfg, self.cfg.data.eval_split).records)

    def synthesise(self, params, prompt_conditions, conditions, prompt_audio, rng, frames=None):
        """16 kHz waveforms continuing prompt_audio (16 kHz) as `conditions` say, each after its
        prompt's own (text ids or semantic tokens, from `conditions()`).

        A delayed LM has no end token: it draws `frames` (per utterance) or, by default, as
        many as the prompt's frames per conditioning token say."""
        t = self.cfg.tts
        ids = [self.join(p, x) for p, x in zip(prompt_conditions, conditions)]
        text = np.zeros((len(ids), max(len(i) for i in ids)), np.int32)
        for i, row in enumerate(ids):
            text[i, : len(row)] = row
        text_lengths = np.array([len(i) for i in ids])
        prompt, prompt_frames = self.encode_audio(prompt_audio)
        params = sharding.host_copy(params)
        if self.valle:
            # The AR continues a prompt of whole groups: its last frames short of a group are dropped.
            prompt_frames = prompt_frames - prompt_frames % self.models["ar"].group_size
            words = {}
            if self.aligned:
                words = {
                    "text_words": np.full(text.shape, -1, np.int32),
                    "first_word": np.array([speechlm.text_words(p).max(initial=-1) + 1 for p in prompt_conditions]),
                }
                for i, row in enumerate(ids):
                    words["text_words"][i, : len(row)] = speechlm.text_words(row)
                words["num_words"] = words["text_words"].max(axis=1) + 1
            first, frames = speechlm.generate_ar(
                self.models["ar"],
                params["ar"],
                text,
                text_lengths,
                prompt[..., 0],
                prompt_frames,
                rng,
                max_new_tokens=t.max_frames,
                temperature=t.temperature,
                top_k=t.top_k,
                top_p=t.top_p,
                guidance_scale=t.guidance_scale,
                **words,
            )
            frames = np.maximum(np.asarray(frames), 1)
            codes = speechlm.generate_nar(
                self.models["nar"], params["nar"], text, text_lengths, prompt, prompt_frames, first, frames
            )
        else:
            if frames is None:
                rate = prompt_frames / np.maximum([len(p) for p in prompt_conditions], 1)
                frames = np.round(rate * [len(x) for x in conditions]).astype(int)
            frames = np.clip(frames, 1, t.max_frames)
            total = prompt_frames + frames
            out = speechlm.generate_delayed(
                self.models["lm"],
                params["lm"],
                text,
                text_lengths,
                prompt,
                prompt_frames,
                total,
                rng,
                frames=int(total.max()),
                temperature=t.temperature,
                top_k=t.top_k,
                top_p=t.top_p,
            )
            out = np.asarray(out)
            codes = np.stack(
                [np.pad(o[p : p + n], ((0, t.max_frames - n), (0, 0))) for o, p, n in zip(out, prompt_frames, frames)]
            )
        codes = np.minimum(np.asarray(codes), self.codebook_size - 1)  # EOS past a row's end
        return self.decode_codes(codes, frames)

    def generate(self, params, mesh):
        t = self.cfg.tts
        pairs = self.prompt_pairs()[t.eval_offset : t.eval_offset + t.eval_examples]
        if not pairs:
            return {}, {}
        prompts, targets = [p for p, _ in pairs], [r for _, r in pairs]
        prompt_audio = [self.read(p["source"]) for p in prompts]
        reference = [self.read(r["source"]) for r in targets]
        # With semantic conditioning the tokens (and the length) come from the real recording:
        # a resynthesis in the prompt's voice, AudioLM's acoustic stage.
        semantic = t.condition == "semantic"
        frames = (
            np.array(
                [
                    -(-len(a) * self.codec.config.sample_rate // speech.SAMPLE_RATE // self.codec.config.hop_length)
                    for a in reference
                ]
            )
            if semantic
            else None
        )
        generated = self.synthesise(
            params,
            self.conditions([p["target"] for p in prompts], prompt_audio),
            self.conditions([r["target"] for r in targets], reference),
            prompt_audio,
            jax.random.PRNGKey(self.cfg.seed),
            frames,
        )
        return {}, {
            "tts_prompt": prompt_audio,
            "tts_reference": reference,
            "tts_generated": generated,
            # The real recording through the codec and back: the ceiling the LM can reach.
            "tts_codec": self.decode_codes(*self.encode_audio(reference)),
            "tts_text": [r["target"] for r in targets],
        }

    def write_artifacts(self, workdir, outputs, step):
        _waveform.write_spoken(workdir, outputs, step)
