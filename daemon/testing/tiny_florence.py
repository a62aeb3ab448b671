"""Build a tiny random-weight Florence-2 checkpoint on disk, with no network.

The checkpoint is in transformers' native Florence-2 layout (the layout of
``florence-community/Florence-2-*``), so it is loaded by exactly the code
that loads a user's real checkpoint: ``AutoProcessor`` and
``AutoModelForImageTextToText`` from a folder.

Two tokenizer sources:

* ``synthetic`` (default): a byte-level BPE trained in-process on a small
  English corpus; a few hundred tokens, fast to build (about a second).
* ``real``: Microsoft's Florence-2-large tokenizer and image processor from a
  folder such as ``../shared/florence-2-large-files`` (51,289 tokens plus
  ``<image>``, 768x768 images, 577 image tokens), converted to the native
  layout. Use it to check prompts and image sequences are the real ones.

Usage: ``python -m daemon.testing.tiny_florence DIR [--real FILES_DIR]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Tokens Microsoft's processor adds after BART's 50,265 (in this order:
# the ids matter, <loc_0> is 50269 in every Florence-2 checkpoint).
FLORENCE_SPECIAL_TOKENS: list[str] = (
    ["<od>", "</od>", "<ocr>", "</ocr>"]
    + [f"<loc_{i}>" for i in range(1000)]
    + [
        "<cap>",
        "</cap>",
        "<ncap>",
        "</ncap>",
        "<dcap>",
        "</dcap>",
        "<grounding>",
        "</grounding>",
        "<seg>",
        "</seg>",
        "<sep>",
        "<region_cap>",
        "</region_cap>",
        "<region_to_desciption>",
        "</region_to_desciption>",
        "<proposal>",
        "</proposal>",
        "<poly>",
        "</poly>",
        "<and>",
    ]
)
IMAGE_TOKEN = "<image>"

# The post-processor rules of the florence-community conversions.
POST_PROCESSOR_CONFIG: dict[str, Any] = {
    "ocr": {
        "pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
        "area_threshold": 0.0,
    },
    "phrase_grounding": {"banned_grounding_tokens": ["the image"]},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Text the synthetic tokenizer is trained on: photo-caption vocabulary, so
# the tiny model's random output reads as words and can be searched.
_CORPUS = """
a photo of a red car parked in front of a yellow building on a sunny street
the image shows a dog and a cat sitting on a wooden table next to a window
a man riding a bicycle along the river with mountains and trees behind him
two people walking on the beach at sunset with waves and birds in the sky
a close up of a flower with green leaves and a small insect on a petal
text on a sign reads open every day from nine to five coffee and bread
a bowl of fruit with apples oranges and bananas on a white kitchen counter
an old stone bridge over a canal with boats houses lights and a church tower
a screenshot of a document with a table of numbers an invoice and a receipt
a child playing football in a park with a blue ball grass and a fence
describe the image in detail what is shown locate the objects with category
""".split("\n")


def _synthetic_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a small byte-level BPE; ids 0-3 are BART's <s> <pad> </s> <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The prompts are in the corpus so that they tokenize into few tokens.
    tokenizer.train_from_iterator([line for line in _CORPUS if line] * 20, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    vocab["<mask>"] = len(vocab)
    return vocab, _as_tuples(model["merges"])


def _as_tuples(merges: list[Any]) -> list[tuple[str, str]]:
    # tokenizers writes merges as "a b" strings or [a, b] lists depending
    # on its version; BartTokenizer accepts only tuples.
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
    return [(str(a), str(b)) for a, b in pairs]


def _real_vocab(files: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    data = json.loads((files / "tokenizer.json").read_text(encoding="utf-8"))
    return dict(data["model"]["vocab"]), _as_tuples(data["model"]["merges"])


def build_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    """A native Florence-2 tokenizer: BART BPE + Florence tokens + <image>."""
    from transformers import AddedToken, BartTokenizer

    tokenizer = BartTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # its stub says str; the class takes the pairs
        add_prefix_space=False,
        model_max_length=1024,
    )
    tokenizer.add_special_tokens({"extra_special_tokens": FLORENCE_SPECIAL_TOKENS})
    # <image> must come after the Florence tokens (id 51289 with the real
    # vocabulary) and be registered by name so the processor finds it.
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    tokenizer._set_model_specific_special_tokens({"image_token": IMAGE_TOKEN})
    return tokenizer


def build_processor(tokenizer: Any, image_size: int) -> Any:
    """A Florence2Processor with a CLIP-style image processor of *image_size*."""
    from transformers import CLIPImageProcessorPil, Florence2Processor

    image_processor = CLIPImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,  # bicubic, as Florence-2
        do_center_crop=False,
        do_rescale=True,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    # One token per 32x32 patch of the last DaViT stage, plus the temporal one.
    image_processor.image_seq_length = (image_size // 32) ** 2 + 1  # type: ignore[attr-defined]
    return Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config=POST_PROCESSOR_CONFIG
    )


def tiny_config(vocab_size: int, image_token_id: int, d_model: int = 32) -> Any:
    """A Florence2Config small enough to run in milliseconds on a CPU (*d_model* widens its text layers)."""
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    vision = Florence2VisionConfig(
        depths=[1, 1, 1, 1],
        embed_dim=[16, 24, 32, 48],
        num_heads=[1, 2, 2, 3],
        num_groups=[1, 2, 2, 3],
        window_size=4,
        projection_dim=d_model,  # must equal the text d_model
        drop_path_rate=0.0,
        # A wide init makes the output depend on the image and the prompt;
        # at the usual 0.02 every image gets the same random caption.
        initializer_range=1.0,
    )
    text = BartConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=1024,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=1.0,
    )
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)


def tiny_model(tokenizer: Any, seed: int, min_new_tokens: int, d_model: int = 32) -> Any:
    """A random-weight Florence2ForConditionalGeneration sized for *tokenizer*."""
    import torch
    from transformers import Florence2ForConditionalGeneration, GenerationConfig

    # Real checkpoints pad the vocabulary to a multiple of 64 (51,328).
    vocab_size = -(-len(tokenizer) // 64) * 64
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(tiny_config(vocab_size, tokenizer.image_token_id, d_model)).eval()
    # Shrink the <loc_N> embeddings (tied to the output layer): the 1,000
    # location tokens would otherwise crowd words out of random captions,
    # while detection and OCR still produce some boxes.
    loc_ids = tokenizer.convert_tokens_to_ids([f"<loc_{i}>" for i in range(1000)])
    with torch.no_grad():
        model.get_input_embeddings().weight[loc_ids] *= 0.7
    model.generation_config = GenerationConfig(
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        min_new_tokens=min_new_tokens,
        no_repeat_ngram_size=3,
        num_beams=1,
    )
    return model


def build_tiny_florence(
    dest: str | Path,
    *,
    real_files: str | Path | None = None,
    image_size: int | None = None,
    seed: int = 0,
    min_new_tokens: int = 10,
    d_model: int = 32,
) -> Path:
    """Write a tiny random-weight Florence-2 checkpoint to *dest* and return it.

    *real_files* selects Microsoft's tokenizer and image processor files
    (``../shared/florence-2-large-files``); without it a synthetic tokenizer
    is trained. *min_new_tokens* goes into the generation config: random
    weights may pick ``</s>`` first, and tests need non-empty output.
    *d_model* 1024 gives ~100 MB of weights, for tests that watch memory.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if real_files is not None:
        files = Path(real_files)
        vocab, merges = _real_vocab(files)
        preprocessor = json.loads((files / "preprocessor_config.json").read_text(encoding="utf-8"))
        image_size = image_size or int(preprocessor["size"]["height"])
    else:
        vocab, merges = _synthetic_vocab()
        image_size = image_size or 64

    tokenizer = build_tokenizer(vocab, merges)
    processor = build_processor(tokenizer, image_size)
    model = tiny_model(tokenizer, seed, min_new_tokens, d_model)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    log.info("tiny Florence-2 written to %s (%d tokens, %dx%d images)", dest, len(tokenizer), image_size, image_size)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.testing.tiny_florence",
        description="Build a tiny random-weight Florence-2 checkpoint (no network needed).",
        epilog="example: python -m daemon.testing.tiny_florence /tmp/tiny-florence "
        "&& florence-watch scan --model /tmp/tiny-florence ~/Pictures",
    )
    parser.add_argument("dest", help="folder to write the checkpoint to")
    parser.add_argument("--real", metavar="FILES", help="use Microsoft's tokenizer/processor files from FILES")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build_tiny_florence(args.dest, real_files=args.real, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
