"""The RefShapes study: editors trained here from scratch on RefShapes, where every edit has an exact answer.

- `data`: the RefShapes dataset at the study's resolution (128 x 96, aspect kept) and a latent cache;
- `vae`: the `refshapes-vae` autoencoder, its training (resumable) and its reconstruction PSNR;
- `text_encoder`: the frozen random CLIP text model and the linear probe that justifies it;
- `measure`: PSNR and the exact foreground metric (agreement with the reference edit inside M_e),
  with bootstrap confidence intervals.

Modules import torch and diffusers at the top; `import referdiffusion.study` alone stays light.
"""
