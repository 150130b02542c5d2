"""`ip2p` and `magicbrush`: InstructPix2Pix checkpoints run through diffusers'
`StableDiffusionInstructPix2PixPipeline`.

They get the whole referring prompt P (they must find the referred object themselves) followed by the
paper's suffix " and do not change any pixel else", the source image at the working size (longer side
512 unless `--size`; sides multiples of 8), the checkpoint's own scheduler, and InstructPix2Pix's
guidance (text 7.5, image 1.5; options `guidance_scale`, `image_guidance_scale`). A model trained by
`referdiffusion train` (a training manifest in its folder, e.g. `refshapes-ip2p`) learned the bare
prompt, so it gets no suffix unless `suffix` is set. Steps default to
100, as InstructPix2Pix's and MagicBrush's scripts use. The noise comes from a CPU generator seeded
per sample, so outputs do not depend on the device. The result is resized back to the source's size.

`magicbrush` is the same adapter on MagicBrush's fine-tuned weights (resolver name `magicbrush`).
"""

from __future__ import annotations

from typing import Any

from benchmark.methods.base import INSTRUCTION_SUFFIX, EditResult, Method


class InstructPix2PixMethod(Method):
    name = "ip2p"
    description = "InstructPix2Pix on the prompt + ' and do not change any pixel else'"
    default_model = "ip2p"
    reads = ("source_image", "prompt")
    default_steps = 100
    default_size = 512
    option_defaults = {"guidance_scale": 7.5, "image_guidance_scale": 1.5, "suffix": INSTRUCTION_SUFFIX}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "suffix" not in kwargs and self.training_manifest is not None:
            self.options["suffix"] = ""  # trained here on the bare prompt
        self.pipe: Any = None

    def setup(self) -> None:
        from benchmark.methods._common import device_and_dtype, load_instruct_pix2pix

        self.device, self.dtype = device_and_dtype(self.device, self.dtype)
        self.pipe = load_instruct_pix2pix(self.model_name, self.overrides, self.device, self.dtype,
                                          progress=self.progress)

    def instruction(self, sample: Any) -> str:
        return sample.prompt + self.options["suffix"]

    def edit(self, sample: Any, *, seed: int) -> Any:
        from benchmark.methods._common import back_to_source, cpu_generator, working_image

        source = sample.source_image
        prompt = self.instruction(sample)
        out = self.pipe(
            prompt,
            image=working_image(source, self.size),
            num_inference_steps=self.steps,
            guidance_scale=float(self.options["guidance_scale"]),
            image_guidance_scale=float(self.options["image_guidance_scale"]),
            generator=cpu_generator(seed),
        )
        return EditResult(back_to_source(out.images[0], source.size), {"prompt_sent": prompt})


class MagicBrushMethod(InstructPix2PixMethod):
    name = "magicbrush"
    description = "MagicBrush (InstructPix2Pix fine-tune) on the prompt + ' and do not change any pixel else'"
    default_model = "magicbrush"
