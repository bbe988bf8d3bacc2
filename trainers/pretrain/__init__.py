"""Base-model pretraining on the Shapes World quality mix: VAE, text-to-image, inpainting."""
