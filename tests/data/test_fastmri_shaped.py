"""End to end on fastMRI-shaped data (issue 10): fit, validate, test, inference and evaluation.

The fixture mimics fastMRI's layout and sizes: knee multi-coil (15 x 640 x 368), brain multi-coil
with 4, 16 and 20 coils and widths 320, 384 and 260 (below the 320 grid), single-coil knee
(640 x 368), files with and without reconstructions, knee and brain folders side by side.
"""

import h5py
import numpy as np
import pytest

from iconet_fastmri.cli import main
from iconet_fastmri.demo import write_fastmri_dataset
from iconet_fastmri.evaluation import evaluate_folders, summarize_rows
from iconet_fastmri.inference import run_inference


@pytest.fixture(scope="module")
def fastmri_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri")
    index = 0

    def vol(folder, challenge, coils, width, recon_width=320, anatomy="knee", drop_recon=False):
        nonlocal index
        (path,) = write_fastmri_dataset(root / folder, challenge, 1, 2, (320, recon_width), kspace_width=width,
                                        num_coils=coils, anatomy=anatomy, seed=index, first_index=index)
        index += 1
        if drop_recon:
            with h5py.File(path, "r+") as f:
                for key in ("reconstruction_rss", "reconstruction_esc"):
                    if key in f:
                        del f[key]

    for split in ("train", "val"):
        vol(f"knee_multicoil_{split}", "multicoil", 15, 368)
        vol(f"knee_singlecoil_{split}", "singlecoil", 1, 368, drop_recon=split == "train")
        vol(f"brain_multicoil_{split}", "multicoil", 4, 320, anatomy="brain")
        vol(f"brain_multicoil_{split}", "multicoil", 16, 384, anatomy="brain", drop_recon=True)
        vol(f"brain_multicoil_{split}", "multicoil", 20, 260, recon_width=260, anatomy="brain")
    return root


CASES = {
    "knee_multicoil": ["--data.challenge", "multicoil", "--data.anatomy", "knee"],
    "knee_singlecoil": ["--data.challenge", "singlecoil", "--data.anatomy", "knee"],
    "brain_multicoil": ["--data.challenge", "multicoil", "--data.anatomy", "brain", "--data.pad_if_smaller", "true"],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_fit_validate_test_inference_evaluation(fastmri_root, tmp_path, case):
    run = tmp_path / "run"
    common = [
        "--seed_everything", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.data_path", str(fastmri_root), "--data.hr_crop", "[320, 320]", "--data.batch_size", "4",
        "--data.num_workers", "0", "--data.use_dataset_cache", "false", *CASES[case],
    ]
    main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.num_sanity_val_steps", "0",
          "--model.model", "ICONet", "--model.model.init_args.width", "4",
          "--model.model.init_args.blocks_per_stage", "1"])
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    main(["validate", *common, "--ckpt_path", "last"])
    main(["test", *common, "--ckpt_path", str(ckpt)])
    val = fastmri_root / f"{case}_val"
    out = run_inference(val, tmp_path / "iconet", checkpoint=ckpt, progress=False)
    assert len(out) == len(list(val.glob("*.h5")))
    rows = evaluate_folders(val, [tmp_path / "iconet"])
    assert len(rows) == len(out) and all(np.isfinite([r["psnr"], r["ssim"], r["nmse"]]).all() for r in rows)
    assert all(r["scale"] == 2 for r in rows)
    assert summarize_rows(rows)
