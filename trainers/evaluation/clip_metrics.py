"""CLIP metrics of edits, with CLIP weights given by path (transformers format; nothing is downloaded):
- CLIP-I: cosine of the output's and the reference result's image embeddings (items with a reference);
- CLIP-T: cosine of the output's image embedding and the target caption's text embedding (items with one);
- CLIP-direction (Gal et al. 2022, as InstructPix2Pix reports it): cosine of the image change (output - source)
  and the caption change (target caption - source caption) in embedding space (items with both captions).
Items without what a metric needs get NaN for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers.evaluation.suites import SuiteItem

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation CLIP was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(path: Path):
    from transformers import AutoTokenizer, CLIPModel

    if not Path(path).is_dir():
        raise FileNotFoundError(f"`--clip` must be a CLIP model directory (transformers format), got `{path}`")
    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


@torch.no_grad()
def image_embeddings(model, images: list[np.ndarray]) -> torch.Tensor:
    size = model.config.vision_config.image_size
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    return F.normalize(_features(model.get_image_features(pixel_values=x)), dim=-1)


@torch.no_grad()
def text_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    tok = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return F.normalize(_features(model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)),
                       dim=-1)


def _features(out) -> torch.Tensor:
    """The projected embedding: transformers 5 returns it as the output's pooler_output, 4.x as the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_metrics(path: Path, items: list[SuiteItem], outputs: np.ndarray) -> dict[str, list[float]]:
    """Per item: clip_i, clip_t, clip_direction (NaN where the item lacks the reference or captions)."""
    model, tokenizer = load_clip(path)
    nan = [float("nan")] * len(items)
    out_emb = image_embeddings(model, list(outputs))
    clip_i, clip_t, direction = list(nan), list(nan), list(nan)
    with_ref = [i for i, it in enumerate(items) if it.target is not None]
    if with_ref:
        ref = image_embeddings(model, [items[i].target for i in with_ref])
        for k, i in enumerate(with_ref):
            clip_i[i] = float(out_emb[i] @ ref[k])
    with_caption = [i for i, it in enumerate(items) if it.target_caption]
    if with_caption:
        txt = text_embeddings(model, tokenizer, [items[i].target_caption for i in with_caption])
        for k, i in enumerate(with_caption):
            clip_t[i] = float(out_emb[i] @ txt[k])
    both = [i for i, it in enumerate(items) if it.target_caption and it.source_caption]
    if both:
        src = image_embeddings(model, [items[i].source for i in both])
        t_src = text_embeddings(model, tokenizer, [items[i].source_caption for i in both])
        t_tgt = text_embeddings(model, tokenizer, [items[i].target_caption for i in both])
        cos = F.cosine_similarity(out_emb[both] - src, t_tgt - t_src, dim=-1)
        for k, i in enumerate(both):
            direction[i] = float(cos[k])
    return {"clip_i": clip_i, "clip_t": clip_t, "clip_direction": direction}
