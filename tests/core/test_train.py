import json
import os
import re
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
from tests.fuzzing import mutate

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


def _step_ids(path: Path) -> list[tuple[int, list[int]]]:
    """(step, sample ids) per training step in the order they ran (a killed job may leave a half line)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append((rec["step"], rec["ids"]))
    return out


def _run_until_killed(folder: Path, at_step: int) -> int:
    env = {**os.environ, "JOB_SLEEP": "0.05"}
    proc = subprocess.Popen([*JOB, "exact", str(folder)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name.split("=")[1].split(".")[0]) for p in (folder / "ckpt").glob("step-step=*.ckpt")]
        if steps and max(steps) >= at_step:
            killed_at = max(steps)
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_at is not None, "the job finished before it could be killed"
    return killed_at


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path):
    """Kill mid-epoch (epoch 1 of 3), rerun: the same samples per step in the same order, the same
    weights bit for bit, the same history, as an uninterrupted run (dropout + momentum included)."""
    import pandas as pd

    ref_dir, folder = tmp_path / "ref", tmp_path / "killed"
    reference = json.loads(subprocess.run([*JOB, "exact", str(ref_dir)], capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1])
    assert reference["global_step"] == 3 * 32
    ref_steps = _step_ids(ref_dir / "ids.jsonl")
    assert [s for s, _ in ref_steps] == list(range(96))

    killed_at = _run_until_killed(folder, at_step=45)
    assert 45 <= killed_at < 64  # inside epoch 1
    from biomed_toolkit.core.train import read_verified_checkpoint

    for ckpt in (folder / "ckpt").glob("*.ckpt"):
        read_verified_checkpoint(ckpt)  # every checkpoint left behind is complete and matches its checksum
    resumed = json.loads(subprocess.run([*JOB, "exact", str(folder)], capture_output=True, text=True,
                                        check=True).stdout.strip().splitlines()[-1])
    assert resumed["global_step"] == reference["global_step"]
    assert resumed["weights"] == reference["weights"]  # float.hex of every parameter: bit-equal

    runs = _step_ids(folder / "ids.jsonl")
    first_resumed = next(i for i in range(1, len(runs)) if runs[i][0] <= runs[i - 1][0])
    before, after = runs[:first_resumed], runs[first_resumed:]
    assert after[0][0] <= killed_at  # the rerun went back to the last checkpoint, not to step 0
    merged = dict(before)
    for step, ids in after:  # steps replayed after the checkpoint saw the same samples again
        if step in merged:
            assert merged[step] == ids, f"step {step} saw other samples after the resume"
        merged[step] = ids
    assert sorted(merged) == list(range(96))
    assert [merged[s] for s in range(96)] == [ids for _, ids in ref_steps]
    epoch1 = [i for s in range(32, 64) for i in merged[s]]
    assert sorted(epoch1) == list(range(512))  # the interrupted epoch saw every sample once

    def history(d):
        return pd.read_csv(d / "final_history.csv", float_precision="round_trip")

    pd.testing.assert_frame_equal(history(folder), history(ref_dir), check_exact=True)
    assert len(history(ref_dir)) > 10


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


def test_cluster_launcher_layout(monkeypatch):
    from biomed_toolkit.core.train import launcher_layout

    for key in ("LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_NNODES", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert launcher_layout("auto", 1) == ("auto", 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launcher_layout("auto", 1) == (4, 2)  # torchrun --nnodes 2 --nproc_per_node 4
    assert launcher_layout(2, 1) == (2, 1)  # explicit devices win
    for key in ("LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "6")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NNODES", "3")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert launcher_layout(None, 1) == (2, 3)  # srun -N 3 --ntasks-per-node 2
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    assert launcher_layout(None, 1) == (None, 1)


# ------------------------------------------------------------------------------------------
# damaged checkpoints, damaged history, bad weights and a NaN loss
# ------------------------------------------------------------------------------------------
EMPTY_REASON = re.compile(r"(?<![\w>])\(\s*\)")  # "checkpoint ()", not "_rebuild_tensor_v2()"


def _small_fit(folder, max_epochs=2, module=None, data=None, **kw):
    torch.manual_seed(0)
    return bt.train.fit(module or Regressor(), data or IndexedRegression(n=64), max_epochs=max_epochs,
                        batch_size=16, checkpoint_dir=folder, every_n_steps=3, progress=False,
                        accelerator="cpu", seed=0, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint folder after 2 epochs of 4 steps: last.ckpt, step-step=6.ckpt, epoch-epoch=1.ckpt."""
    folder = tmp_path_factory.mktemp("trained")
    _small_fit(folder)
    return folder


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "zero-byte":
        path.write_bytes(b"")
    elif how == "bit-flipped":
        i = len(raw) // 3
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1:])
    elif how == "random bytes":
        path.write_bytes(os.urandom(len(raw)))
    elif how == "missing":
        path.unlink()
    elif how == "dangling link":
        path.unlink()
        path.symlink_to(path.with_name("gone.ckpt"))


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "bit-flipped", "random bytes", "missing",
                                 "dangling link"])
def test_damaged_last_checkpoint_falls_back_to_newest_intact(trained, tmp_path, how, bt_log):
    folder = _copy(trained, tmp_path / "run")
    _damage(folder / "last.ckpt", how)
    result = _small_fit(folder, max_epochs=3)
    assert result.global_step == 12  # resumed from the end of epoch 1 (step 8), not from step 0
    warning = [r.getMessage() for r in bt_log.records if r.levelname == "WARNING" and "Resuming from" in r.getMessage()]
    assert len(warning) == 1, bt_log.text
    assert "last.ckpt" in warning[0] and "epoch-epoch=1.ckpt" in warning[0]
    if how == "random bytes":
        assert "not a torch checkpoint" in warning[0] and "allowlist" not in warning[0]
    assert not EMPTY_REASON.search(warning[0])
    assert len(result.history) > 0


def test_resume_error_when_no_checkpoint_is_readable(trained, tmp_path):
    from biomed_toolkit.core.errors import CheckpointError

    folder = _copy(trained, tmp_path / "run")
    for ckpt in folder.glob("*.ckpt"):
        _damage(ckpt, "truncated")
    with pytest.raises(CheckpointError) as info:
        _small_fit(folder, max_epochs=3)
    text = str(info.value)
    for name in ("last.ckpt", "step-step=6.ckpt", "epoch-epoch=1.ckpt"):
        assert name in text
    assert "resume=False" in text and "truncated" in text
    assert _small_fit(folder, max_epochs=1, resume=False).global_step == 4  # the way out works


def test_checkpoint_of_another_shape_is_named(trained, tmp_path):
    from biomed_toolkit.core.errors import CheckpointError

    class Wider(Regressor):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            loss = torch.nn.functional.mse_loss(self.net(x)[:, 0], y)
            self.log("train_loss", loss)
            return loss

    folder = _copy(trained, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"last\.ckpt does not fit this module: shape mismatches: "
                                              r"net\.weight: checkpoint \(1, 8\) vs model \(2, 8\)"):
        _small_fit(folder, max_epochs=3, module=Wider())


def test_checkpoint_without_optimizer_state_or_with_nan_weights(trained, tmp_path):
    from biomed_toolkit.core.errors import CheckpointError
    from biomed_toolkit.core.safe_pickle import load_checkpoint

    folder = _copy(trained, tmp_path / "run")
    for ckpt in folder.glob("*.ckpt"):
        data = load_checkpoint(ckpt)
        del data["optimizer_states"]
        ckpt.with_name(ckpt.name + ".sha256").unlink()
        torch.save(data, ckpt)
    with pytest.raises(CheckpointError, match="no optimizer or loop state.*resume=False"):
        _small_fit(folder, max_epochs=3)

    folder = _copy(trained, tmp_path / "nan")
    data = load_checkpoint(folder / "last.ckpt")
    data["state_dict"]["net.weight"][0, 0] = float("nan")
    (folder / "last.ckpt.sha256").unlink()
    torch.save(data, folder / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"NaN or inf weights \(net\.weight\)"):
        _small_fit(folder, max_epochs=3)


def test_nan_weights_and_nan_loss_stop_with_package_errors(tmp_path):
    from biomed_toolkit.core.errors import TrainingError

    module = Regressor()
    with torch.no_grad():
        module.net.bias.fill_(float("nan"))
    with pytest.raises(InputError, match=r"NaN or inf before training: net\.bias"):
        _small_fit(tmp_path / "a", module=module)

    data = IndexedRegression(n=64)
    data.x[37, 3] = float("inf")  # one bad sample: the step whose batch holds it fails
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at optimizer step \d+ \(epoch 0\)"):
        _small_fit(tmp_path / "b", data=data)


def test_batch_of_wrong_shape_is_a_package_error(tmp_path):
    data = IndexedRegression(n=32)
    data.x = data.x[:, :5]  # 5 features for a Linear(8, 1)
    with pytest.raises(InputError, match=r"a batch does not fit the module at optimizer step 0 .*"
                                         r"shapes cannot be multiplied.*Fix:") as info:
        _small_fit(tmp_path, data=data)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("content", [b"", b"garbage\x00\xff\n1,2\n\"unclosed", b"step,metric\n1,x\n",
                                     b"a,b,c\n1,2,3\n"])
def test_damaged_history_never_fails_fit(tmp_path, content, bt_log):
    from biomed_toolkit.core.errors import CheckpointError
    from biomed_toolkit.core.train import read_history

    folder = tmp_path / "run"
    _small_fit(folder, max_epochs=1)
    (folder / "history.csv").write_bytes(content)
    if content:
        with pytest.raises(CheckpointError, match="history.csv is not a readable training history"):
            read_history(folder)
    result = _small_fit(folder, max_epochs=2)
    assert result.global_step == 8
    assert "train_loss" in result.history.columns and len(result.history) >= 1
    if content:
        assert "not a readable training history" in bt_log.text


def test_half_written_history_line_is_repaired(tmp_path):
    folder = tmp_path / "run"
    _small_fit(folder, max_epochs=1)
    with open(folder / "history.csv", "a") as handle:
        handle.write("5,train_lo")  # a kill in the middle of a row
    result = _small_fit(folder, max_epochs=2)
    assert result.history["step"].is_monotonic_increasing and result.global_step == 8


def test_resumable_sampler_shards_and_resumes():
    from biomed_toolkit.core.train import _resumable_sampler_class

    sampler = _resumable_sampler_class()(list(range(10)), shuffle=True, seed=4)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(full) == list(range(10)) and len(sampler) == 10
    sampler.resume(2, 6)
    assert list(sampler) == full[6:]
    assert list(sampler) == full  # the skip applies to one epoch only
    sampler.set_epoch(3)
    assert list(sampler) != full


# ------------------------------------------------------------------------------------------
# fuzz: mutated checkpoint bytes give a package error (or load), never anything else
# ------------------------------------------------------------------------------------------
# CI: 300 examples per target (about 30 s in all). Nightly size:
#   BT_FUZZ_EXAMPLES=10000 python -m pytest tests/core/test_train.py -k fuzz
# (measured on 2 cores at load ~15: checkpoint bytes 746 s, safetensors bytes 178 s, resume
# choice 2,500 examples 123 s; all pass).
FUZZ_EXAMPLES = int(os.environ.get("BT_FUZZ_EXAMPLES", "300"))


def _mutations():
    from hypothesis import strategies as st

    flips = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4)
    return st.one_of(
        st.tuples(st.just("flip"), flips),
        st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
        st.tuples(st.just("insert"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64))),
        st.tuples(st.just("replace"), st.binary(max_size=4096)),
    )


def test_fuzz_mutated_checkpoint_bytes(trained, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings

    from biomed_toolkit.core.errors import CheckpointError
    from biomed_toolkit.core.safe_pickle import load_checkpoint
    from biomed_toolkit.core.train import read_verified_checkpoint

    raw = (trained / "epoch-epoch=1.ckpt").read_bytes()
    digest = (trained / "epoch-epoch=1.ckpt.sha256").read_text()
    work = tmp_path_factory.mktemp("fuzz")

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_mutations())
    def check(mutation):
        data = mutate(raw, mutation)
        path = work / "x.ckpt"
        path.write_bytes(data)
        (work / "x.ckpt.sha256").write_text(digest)
        try:
            read_verified_checkpoint(path)
            assert data == raw  # with its checksum, only the intact bytes load
        except CheckpointError as exc:
            assert str(path) in str(exc) and "Fix:" in str(exc) and not EMPTY_REASON.search(str(exc))
        try:  # without the checksum: loads or a CheckpointError, never another exception
            load_checkpoint(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)

    check()


def test_fuzz_resume_choice_with_mutated_last(trained, tmp_path_factory):
    """Whatever happens to last.ckpt, the resume choice is last.ckpt (intact) or the epoch
    checkpoint, with a warning naming both; nothing but package errors."""
    from hypothesis import HealthCheck, given, settings

    from biomed_toolkit.core.train import _atomic_checkpoint_io, _resume_from

    work = _copy(trained, tmp_path_factory.mktemp("fuzz_resume") / "run")
    raw = (trained / "last.ckpt").read_bytes()
    module = Regressor()

    @settings(max_examples=max(50, FUZZ_EXAMPLES // 4), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_mutations())
    def check(mutation):
        data = mutate(raw, mutation)
        (work / "last.ckpt").write_bytes(data)
        chosen = _resume_from(work, module, _atomic_checkpoint_io())
        assert chosen is not None
        assert chosen.name == ("last.ckpt" if data == raw else "epoch-epoch=1.ckpt")

    check()


def test_fuzz_mutated_safetensors_bytes(tmp_path_factory):
    """Mutated model.safetensors: the tensors load, or a CheckpointError names the file."""
    from hypothesis import HealthCheck, given, settings
    from safetensors.torch import save_file

    from biomed_toolkit.core.errors import CheckpointError
    from biomed_toolkit.core.weights import read_safetensors

    work = tmp_path_factory.mktemp("fuzz_st")
    save_file({"w": torch.randn(4, 8), "b": torch.arange(6)}, str(work / "ok.safetensors"),
              metadata={"format": "pt", "alias:tied": "w"})
    raw = (work / "ok.safetensors").read_bytes()
    assert set(read_safetensors(work / "ok.safetensors")[0]) == {"w", "b", "tied"}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_mutations())
    def check(mutation):
        path = work / "x.safetensors"
        path.write_bytes(mutate(raw, mutation))
        try:
            read_safetensors(path)
        except CheckpointError as exc:
            assert str(path) in str(exc) and "Fix:" in str(exc)

    check()
