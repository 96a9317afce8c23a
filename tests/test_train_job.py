"""The training job on the embedded model: what a user reads after it (agreement, gain, labelled before/after)."""

import numpy as np
from PIL import Image

from agents.job.train import TrainConfig, train


def test_job_on_the_default_model_reports_digit_agreement_and_labels_its_pictures(tmp_path, capsys):
    cfg = TrainConfig.from_flat(dict(model="default", num_steps=2, epochs=1, samples_per_epoch=4, num_envs=4,
                                     batch_size=4, device="cpu", tensorboard=False, output_dir=str(tmp_path)))
    metrics = train(cfg).metrics
    for key in ("digit_agreement_before", "digit_agreement_after"):
        assert 0 <= metrics[key] <= 1
    assert np.isfinite(metrics["eval_gain_in_initial_std"]) and metrics["eval_kl_to_base_after"] >= 0
    out = capsys.readouterr().out
    assert (f"digits the classifier reads as prompted: {100 * metrics['digit_agreement_before']:.0f} % → "
            f"{100 * metrics['digit_agreement_after']:.0f} %") in out
    with Image.open(tmp_path / "before_after.png") as png:
        picture = np.asarray(png.convert("L"))
    title, grid = picture[:16], picture[16:]
    assert (title < 128).any() and grid.shape[0] == 10 * (16 * 4 + 2) + 2  # a title over ten rows of digits
    assert (title[:, picture.shape[1] // 2 + 10 :] < 128).any()  # the right half has its own title
