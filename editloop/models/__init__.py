"""Model zoo: latent diffusion from the same diffusers / transformers classes real checkpoints use."""
