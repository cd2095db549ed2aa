"""Siamese matcher: architecture, persistence, the embedded demo, fine-tuning, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from biomed_toolkit.core.errors import CheckpointError
from biomed_toolkit.mammo.modeling import DEMO_NAME, SiameseConfig, SiameseMatcher, load
from biomed_toolkit.mammo.phantom import phantom
from biomed_toolkit.mammo.training import PairDataset, build_pairs, finetune


def test_forward_and_shared_branches():
    torch.manual_seed(0)
    model = SiameseMatcher(SiameseConfig(channels=(8, 16), embed_dim=16, hidden=16)).eval()
    a = torch.randn(5, 2, 24, 24)
    b = torch.randn(5, 2, 24, 24)
    out = model(a, b)
    assert out.logits.shape == (5,) and ((out.probabilities > 0) & (out.probabilities < 1)).all()
    # One branch for both views: a patch embeds the same whichever side it is on.
    same = model(a, a)
    torch.testing.assert_close(same.embeddings[0], same.embeddings[1])
    torch.testing.assert_close(out.embeddings[1], model.embed(b))


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = SiameseMatcher(SiameseConfig(channels=(8, 16), embed_dim=16, hidden=16)).eval()
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["channels"] == [8, 16] and cfg["model_type"] == "mammo-siamese"
    back = SiameseMatcher.from_pretrained(tmp_path / "m")
    x = torch.randn(3, 2, 24, 24)
    torch.testing.assert_close(back(x, x.flip(-1)).logits, model(x, x.flip(-1)).logits)
    assert back.card.sha256 and back.card.family == "mammo"
    # A config that does not fit the weights is refused with the offending keys named.
    cfg["embed_dim"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        SiameseMatcher.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        SiameseMatcher.from_pretrained(tmp_path / "m")


def test_detector_architecture_keys_and_first_demo_format(tmp_path):
    from torch import nn

    torch.manual_seed(2)
    cfg = SiameseConfig(channels=(8, 16), embed_dim=16, hidden=16, detector_channels=(8, 8, 8),
                        detector_dilations=(1, 3, 1), detector_norm=True)
    model = SiameseMatcher(cfg).eval()
    convs = [m for m in model.detector.body if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 3, 1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.detector.body) == 3
    x = torch.randn(2, 3, 40, 32)
    assert model.detector(x).shape == (2, 1, 40, 32)  # one logit per grid cell
    back = SiameseMatcher.from_pretrained(model.save_pretrained(tmp_path / "m"))
    torch.testing.assert_close(back.detector(x), model.detector(x))
    # A config written before these keys existed: dilations 1, 2, 4, ... and no batch norm.
    old = SiameseConfig.from_dict({k: v for k, v in cfg.to_dict().items()
                                   if k not in ("detector_dilations", "detector_norm")})
    plain = SiameseMatcher(old)
    assert [c.dilation[0] for c in plain.detector.body if isinstance(c, nn.Conv2d)] == [1, 2, 4]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.detector.body)


def test_pairs_have_positives_and_hard_negatives():
    case = phantom(40, n_lesions=3, density="a", shape=(384, 312))
    a, b, y = build_pairs(case, neg_per_pos=3, rng=np.random.default_rng(0))
    assert a.shape == b.shape and a.shape[1:] == (2, 24, 24) and len(y) == len(a)
    assert 0 < y.mean() < 0.5
    ds = PairDataset([case], seed=0)
    pa, pb, lab = ds[0]
    assert pa.shape == (2, 24, 24) and lab.item() in (0.0, 1.0)


@pytest.fixture(scope="module")
def demo():
    try:
        return load()
    except CheckpointError as e:  # pragma: no cover - the demo ships with the package
        pytest.fail(f"embedded demo missing: {e}")


def test_embedded_demo_card_and_quality(demo):
    from biomed_toolkit.core import hub

    assert demo.card.name == DEMO_NAME
    spec = hub.registry()[DEMO_NAME]
    assert demo.card.sha256 == spec.sha256["model.safetensors"]
    assert (spec.path / "training_record.json").exists()
    from biomed_toolkit.mammo.evaluation import evaluate

    # Held-out seeds (training used 0-99 and 50000+): the demo must separate true pairs.
    cases = [phantom(s, n_lesions=3, density=0.25, shape=(512, 416)) for s in (90001, 90002, 90003)]
    df = evaluate(cases, ["siamese", "template"], model=demo).set_index("method")
    assert df.loc["siamese", "roc_auc"] > 0.8
    assert df.loc["siamese", "roc_auc"] > df.loc["template", "roc_auc"]


def test_finetune_head_only_leaves_input_untouched(demo):
    before = {k: v.clone() for k, v in demo.state_dict().items()}
    cases = [phantom(s, n_lesions=3, density="d", noise=0.04, shape=(384, 312))
             for s in (70000, 70001)]
    # One fine-tuning contract (#11): a new model comes back, its history on it.
    tuned = finetune(demo, cases, max_epochs=1, freeze="branch.*", batch_size=64)
    result = tuned
    assert "train_loss_step" in result.history.columns or "train_loss_epoch" in result.history.columns
    for k, v in demo.state_dict().items():
        torch.testing.assert_close(v, before[k])  # the input model is not changed
    new = tuned.state_dict()
    for k in ("branch.0.weight", "branch.1.running_mean"):
        torch.testing.assert_close(new[k], before[k])  # frozen branch, BatchNorm stats too
    assert not torch.equal(new["head.0.weight"], before["head.0.weight"])  # trained head


def test_import_stays_light():
    code = (
        "import sys, biomed_toolkit as bt\n"
        "m = bt.mammo\n"
        "need = {'read','read_case','phantom','write_dicom','detect_candidates','extract_patches',"
        "'match','evaluate_matches','evaluate','load','SiameseMatcher','finetune','show_napari',"
        "'mammo_pair','LesionMatcher'}\n"
        "assert need <= set(m.__all__), need - set(m.__all__)\n"
        "m.read; m.phantom; m.match\n"
        "print(sorted(x for x in ('torch','napari','plotly') if x in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
