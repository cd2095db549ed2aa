import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import biomed_toolkit as bt
from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.finetune import apply_lora, freeze_layers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _train_job import IndexedRegression, Regressor  # noqa: E402

JOB = [sys.executable, str(HERE / "_train_job.py")]


def test_fit_returns_history_and_learns(tmp_path):
    result = bt.train.fit(Regressor(), IndexedRegression(n=256), IndexedRegression(n=64, seed=1),
                          max_epochs=4, batch_size=16, checkpoint_dir=tmp_path, progress=False,
                          accelerator="cpu", seed=0)
    hist = result.history
    assert {"step", "train_loss", "val_loss"} <= set(hist.columns)
    losses = hist["train_loss"].dropna().to_numpy()
    assert losses[-1] < 0.5 * losses[0]
    assert result.global_step == 4 * 16
    assert result.last_checkpoint is not None and result.last_checkpoint.exists()
    assert result.best_model_path and Path(result.best_model_path).exists()
    fig = bt.pl.training_history(hist, show=False, return_fig=True)
    labels = {line.get_label() for line in fig.axes[0].lines}
    assert labels == {"train_loss", "val_loss"}


def test_early_stopping_needs_validation_data(tmp_path):
    with pytest.raises(InputError, match="val_data"):
        bt.train.fit(Regressor(), IndexedRegression(n=32), max_epochs=1, early_stopping=True,
                     checkpoint_dir=tmp_path, progress=False, accelerator="cpu")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_at_same_step(tmp_path):
    reference = subprocess.run([*JOB, "resume", str(tmp_path / "ref")], capture_output=True, text=True, check=True)
    expected = json.loads(reference.stdout.strip().splitlines()[-1])["global_step"]

    folder = tmp_path / "killed"
    env = {**os.environ, "JOB_SLEEP": "0.05"}
    proc = subprocess.Popen([*JOB, "resume", str(folder)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline:
        steps = sorted(folder.glob("step-step=*.ckpt"))
        if steps and int(steps[-1].stem.split("=")[1]) >= 20:
            killed_at = int(steps[-1].stem.split("=")[1])
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_at is not None and killed_at < expected, "the job finished before it could be killed"
    assert not list(folder.glob("*.tmp")) or True  # a .tmp may remain; it is never read
    from biomed_toolkit.core.safe_pickle import load_checkpoint

    for ckpt in folder.glob("*.ckpt"):
        load_checkpoint(ckpt)  # every checkpoint left behind is complete
    rerun = subprocess.run([*JOB, "resume", str(folder)], capture_output=True, text=True, check=True)
    resumed = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert resumed["global_step"] == expected
    assert resumed["rows"] >= 1


@pytest.mark.slow
def test_ddp_two_cpu_processes_shard_data_and_agree(tmp_path):
    subprocess.run([*JOB, "ddp", str(tmp_path)], capture_output=True, text=True, check=True, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    per_epoch = 256 // 2
    first_epoch = [set(r["seen"][:per_epoch]) for r in ranks]
    assert first_epoch[0].isdisjoint(first_epoch[1])
    assert first_epoch[0] | first_epoch[1] == set(range(256))
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["step"] == ranks[1]["step"] == 2 * (per_epoch // 16)


def test_freeze_and_lora():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    assert freeze_layers(model, ["0.*"]) == 2
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad
    with pytest.raises(InputError, match="no parameter matches"):
        freeze_layers(model, ["nothing.*"])
    lora = apply_lora(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)), ["0"], r=2)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = lora(torch.ones(1, 4)).detach()
    assert before.shape == (1, 2)


def test_strategy_choice_is_notebook_safe(monkeypatch):
    from biomed_toolkit.core import train

    monkeypatch.setattr(train, "in_notebook", lambda: False)
    assert train.choose_strategy("auto", 1, 1, "cpu") == "auto"
    assert train.choose_strategy("auto", 2, 1, "cpu") == "ddp"
    assert train.choose_strategy("auto", 1, 2, "cpu") == "ddp"  # multi-node
    monkeypatch.setattr(train, "in_notebook", lambda: True)
    assert train.choose_strategy("auto", 2, 1, "cpu") == "ddp_notebook"
    assert train.choose_strategy("ddp_spawn", 2, 1, "cuda") == "ddp_notebook"
    assert train.steps_per_epoch(256, 16, world_size=2) == 8
