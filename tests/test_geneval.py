"""The geneval reward: the program that checks a shapes-world image against its prompt (issue #19)."""

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY

from benchmarks.scene_metrics import category_scores
from ddpo_env.scenes import (
    CATEGORIES,
    HELDOUT_CATEGORIES,
    ObjectSpec,
    SceneSpec,
    draw,
    make_scene,
    parse_prompt,
    prompt_for,
    sample_spec,
    violations,
)
from ddpo_env.scenes.render import PlacedObject
from rewards import REWARDS, GenEval, GenEvalBinary, GenEvalStrict, RewardError, add_reward, checked_scores, verify
from rewards.scene_detect import detect


def _ground_truth(n, seed):
    """n renders with their prompts: training specs of every category, and held-out specs of those that have any."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        category = CATEGORIES[i % len(CATEGORIES)]
        heldout = i % 4 == 3 and category in HELDOUT_CATEGORIES
        spec = sample_spec(category, rng, heldout=heldout)
        out.append((spec, prompt_for(spec, rng), make_scene(spec, rng, avoid_heldout=False)))
    return out


def test_verifier_passes_ground_truth_renders():
    truth = _ground_truth(900, seed=11)
    verdicts = verify(np.stack([s.image for _, _, s in truth]), [p for _, p, _ in truth])
    accuracy = np.mean([v.correct for v in verdicts])
    assert accuracy >= 0.99, [(p, v.caption) for (_, p, _), v in zip(truth, verdicts, strict=True) if not v.correct]
    for (spec, _, scene), verdict in zip(truth, verdicts, strict=True):  # and it found exactly what was drawn
        assert sorted((d.colour, d.shape) for d in verdict.detections) == sorted(
            (o.colour, o.shape) for o in scene.objects)
        assert verdict.spec == spec and (verdict.score == 1.0) == verdict.correct


def test_verifier_fails_every_render_made_to_violate_its_prompt():
    rng = np.random.default_rng(12)
    kinds, checked = set(), 0
    for spec, prompt, _ in _ground_truth(300, seed=12):
        for kind, wrong in violations(spec).items():
            image = make_scene(wrong, rng, avoid_heldout=False).image
            verdict = verify(image[None], [prompt])[0]
            assert not verdict.correct and verdict.score < 1, (kind, prompt, verdict.caption)
            kinds.add(kind)
            checked += 1
    assert kinds == {"shape", "colour", "count", "count_fewer", "missing", "relation", "binding"} and checked > 700


def _scene(*objects):
    return draw(tuple(PlacedObject(*o) for o in objects), np.random.default_rng(0))


def test_partial_credit_on_known_scenes():
    two_red_circles = _scene(("circle", "red", 8, 8, 5), ("circle", "red", 24, 24, 5))
    swapped = _scene(("square", "green", 8, 8, 5), ("circle", "red", 24, 24, 5))
    reversed_ = _scene(("circle", "red", 24, 16, 5), ("square", "blue", 8, 16, 5))
    cases = [
        (two_red_circles, "three red circles", 2 / 3),  # counting: 1 − |2 − 3| / 3
        (two_red_circles, "two red circles", 1.0),
        (two_red_circles, "four circles", 0.5),
        (two_red_circles, "two blue circles", 0.5),  # the shape is there, not the colour: half
        (swapped, "a red square and a green circle", 0.5),  # binding swapped: half for each group
        (swapped, "a square and a circle", 1.0),
        (reversed_, "a red circle to the left of a blue square", 2 / 3),  # both there, relation wrong
        (reversed_, "a red circle to the right of a blue square", 1.0),
        (reversed_, "a triangle", 0.0),
    ]
    for image, prompt, score in cases:
        verdict = verify(image[None], [prompt])[0]
        assert verdict.score == pytest.approx(score), (prompt, verdict.caption)
        assert verdict.correct == (score == 1.0)
        assert GenEval()(image[None], [prompt])[0] == pytest.approx(score)
        assert GenEvalBinary()(image[None], [prompt])[0] == float(score == 1.0)


def test_strict_credit_charges_objects_the_prompt_did_not_ask_for():
    four = _scene(("triangle", "red", 7, 7, 4), ("triangle", "blue", 24, 7, 4), ("circle", "red", 7, 24, 4),
                  ("square", "green", 24, 24, 4))
    one = _scene(("triangle", "red", 16, 16, 5))
    cases = [  # (image, prompt, GenEval's partial credit, the strict one)
        (four, "a triangle", 1.0, 1 / 4),  # the hack: the verdict passes, the strict credit is asked / found
        (four, "a red triangle and a green square", 1.0, 2 / 4),
        (four, "a red triangle to the left of a blue triangle", 1.0, 2 / 4),
        (four, "two triangles", 1.0, 2 / 4),  # counting: the groups' count is exact, the other objects still cost
        (four, "a yellow circle", 0.5, 0.5 / 4),
        (one, "a red triangle", 1.0, 1.0),  # nothing extra: the same score
        (one, "a red triangle and a blue square", 0.5, 0.5),  # fewer than asked: charged by the credit alone
    ]
    images = np.stack([image for image, _, _, _ in cases])
    prompts = [prompt for _, prompt, _, _ in cases]
    np.testing.assert_allclose(GenEval()(images, prompts), [c for _, _, c, _ in cases])
    np.testing.assert_allclose(GenEvalStrict()(images, prompts), [c for _, _, _, c in cases])
    np.testing.assert_allclose(GenEval(charge_extras=True)(images, prompts), [c for _, _, _, c in cases])
    assert REWARDS["geneval_strict"] is GenEvalStrict
    assert category_scores(images, prompts)["extra_objects"] == pytest.approx((3 + 2 + 2 + 2 + 3 + 0 + 0) / 7)
    truth = _ground_truth(120, seed=14)  # the generator's renders draw exactly what is asked: full strict credit
    assert (GenEvalStrict()(np.stack([s.image for _, _, s in truth]), [p for _, p, _ in truth]) == 1.0).mean() >= 0.99
    with pytest.raises(ValueError, match="charge_extras scales the partial credit, and binary=True has none"):
        GenEval(binary=True, charge_extras=True)


def test_detection_does_not_depend_on_the_image_size():
    for spec, prompt, scene in _ground_truth(60, seed=13):
        big = scene.image.repeat(4, axis=0).repeat(4, axis=1)  # 128×128, as an upscaled sample would be
        assert sorted((d.colour, d.shape) for d in detect(big)) == sorted((d.colour, d.shape) for d in detect(
            scene.image))
        assert verify(big[None], [prompt])[0].correct


def test_background_noise_and_specks_are_not_objects():
    rng = np.random.default_rng(0)
    image = _scene(("square", "yellow", 16, 16, 5))
    noisy = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    noisy[2, 2] = noisy[29, 3] = (230, 30, 30)  # two one-pixel red specks
    assert [(d.colour, d.shape) for d in detect(noisy)] == [("yellow", "square")]
    assert verify(noisy[None], ["a yellow square"])[0].correct


def test_geneval_is_a_named_reward_and_its_errors_name_the_grammar():
    assert REWARDS["geneval"] is GenEval and REWARDS["geneval_binary"] is GenEvalBinary
    image = _scene(("circle", "red", 16, 16, 5))[None]
    with pytest.raises(RewardError) as e:
        checked_scores(GenEval(), image, ["a cat on a mat"])
    assert str(e.value).startswith("reward 'geneval' raised ValueError: cannot read the scene prompt 'a cat on a mat'")
    assert "'a red circle to the left of a blue square'" in str(e.value)
    with pytest.raises(ValueError, match="verify got 1 images and 2 prompts"):
        verify(image, ["a circle", "a square"])
    assert parse_prompt("a red circle") == SceneSpec("colors", (ObjectSpec("circle", "red"),))


def test_geneval_wraps_an_env_and_rejects_prompts_it_cannot_read():
    venv = add_reward(gym.make_vec("DenoisingDiffusion-v0", num_envs=2, **TINY, prompts=["a red circle"]), "geneval")
    venv.reset(seed=0)
    for _ in range(TINY["num_steps"]):
        _, reward, terminated, _, info = venv.step(np.zeros((2, *venv.single_action_space.shape), np.float32))
    assert terminated.all() and info["_reward_geneval"].all()
    assert ((0 <= info["reward_geneval"]) & (info["reward_geneval"] <= 1)).all()
    np.testing.assert_allclose(reward, info["reward_geneval"])
    bad = add_reward(gym.make_vec("DenoisingDiffusion-v0", num_envs=2, **TINY, prompts=["a cat"]), "geneval")
    bad.reset(seed=0)
    with pytest.raises(RewardError, match="cannot read the scene prompt 'a cat'"):
        for _ in range(TINY["num_steps"]):
            bad.step(np.zeros((2, *bad.single_action_space.shape), np.float32))


def test_relation_scores_tell_a_missing_object_from_a_reversed_relation():
    from benchmarks.scene_metrics import relation_scores

    rng = np.random.default_rng(13)
    specs = [sample_spec("position", rng) for _ in range(40)]
    prompts = [prompt_for(spec, rng) for spec in specs]
    right = [make_scene(spec, rng).image for spec in specs]
    reversed_ = [make_scene(violations(spec)["relation"], rng).image for spec in specs]
    missing = [make_scene(violations(spec)["missing"], rng).image for spec in specs]
    assert relation_scores(verify(np.stack(right), prompts)) == {
        "samples": 40, "both_found": 1.0, "relation_given_both": 1.0, "opposite_given_both": 0.0}
    assert relation_scores(verify(np.stack(reversed_), prompts)) == {
        "samples": 40, "both_found": 1.0, "relation_given_both": 0.0, "opposite_given_both": 1.0}
    assert relation_scores(verify(np.stack(missing), prompts))["both_found"] == 0.0
    assert relation_scores(verify(np.stack(right[:1]), ["a red circle"])) is None  # no position prompt
