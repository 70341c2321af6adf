"""fusedclip.torch.patch() inside the training loops people run: HF
transformers' Trainer, Lightning and accelerate, each training a tiny model
built from a config (no download) for 20 steps with fusedclip patched in,
against the same run with torch's own clip.

Each test checks that the losses agree to 1e-5 (fusedclip's norm is exact
and its scale is computed in float64, so the gradients differ from torch's
by a few float32 ulps), and that the clip went through fusedclip (the
Patch's call counts).  The clipping threshold is small enough that every
step clips.  The frameworks are in the [test] extra; where one is not
installed its test is skipped, saying so.
"""
import math

import pytest

torch = pytest.importorskip("torch")

import fusedclip.torch as fct  # noqa: E402

STEPS = 20


def close(a, b, tol=1e-5):
    assert len(a) == len(b) == STEPS, (len(a), len(b))
    for x, y in zip(a, b):
        assert math.isfinite(x) and abs(x - y) <= tol * max(1.0, abs(y)), (a, b)


def run_twice(train):
    """(losses with torch's clip, losses with fusedclip patched in, the Patch)."""
    base = train()
    with fct.patch() as handle:
        assert torch.nn.utils.clip_grad_norm_.__fusedclip_patch__ is handle
        ours = train()
    assert not handle.active and not hasattr(torch.nn.utils.clip_grad_norm_, "__fusedclip_patch__")
    return base, ours, handle


# ---------------------------------------------------------------- HF transformers
def test_hf_trainer_max_grad_norm(tmp_path):
    transformers = pytest.importorskip("transformers", reason="HF transformers is not installed")

    class Tokens(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randint(0, 64, (STEPS * 4, 16), generator=g)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.x[i]}

    def train():
        transformers.set_seed(0)
        cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
        model = transformers.GPT2LMHeadModel(cfg)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-3,
            max_grad_norm=0.05, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
            dataloader_num_workers=0, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens())
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
        assert all(n > 0.05 for n in norms)  # every step clipped
        return losses

    base, ours, handle = run_twice(train)
    close(base, ours)
    # accelerate's clip_grad_norm_ calls get_total_norm and clip_grads_with_norm_ (its
    # DTensor-aware path) or clip_grad_norm_: either way, through fusedclip, every step
    through = handle.calls["clip_grad_norm_"] + handle.calls["clip_grads_with_norm_"]
    assert through >= STEPS and sum(handle.fallbacks.values()) == 0, handle


# ---------------------------------------------------------------- Lightning
@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_lightning_gradient_clip_val(algorithm):
    pl = pytest.importorskip("lightning.pytorch", reason="Lightning is not installed")

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
            self.losses = []

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y) * 100.0
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    def train():
        pl.seed_everything(0, verbose=False)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(STEPS * 8, 8, generator=g)
        data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True) ** 2)
        net = Net()
        trainer = pl.Trainer(max_steps=STEPS, gradient_clip_val=0.1, gradient_clip_algorithm=algorithm,
                             accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(net, torch.utils.data.DataLoader(data, batch_size=8))
        return net.losses

    base, ours, handle = run_twice(train)
    close(base, ours)
    name = "clip_grad_norm_" if algorithm == "norm" else "clip_grad_value_"
    assert handle.calls[name] == STEPS, handle


# ---------------------------------------------------------------- accelerate
def test_accelerate_clip_grad_norm_():
    accelerate = pytest.importorskip("accelerate", reason="accelerate is not installed")

    def train():
        accelerate.utils.set_seed(0)
        acc = accelerate.Accelerator(cpu=True)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(STEPS * 8, 8, generator=g)
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True) ** 2),
                                           batch_size=8)
        model, opt, data = acc.prepare(model, opt, data)
        losses = []
        for x, y in data:
            loss = torch.nn.functional.mse_loss(model(x), y) * 100.0
            acc.backward(loss)
            norm = acc.clip_grad_norm_(model.parameters(), 0.1)
            assert float(norm) > 0.1
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
        return losses

    base, ours, handle = run_twice(train)
    close(base, ours)
    through = handle.calls["clip_grad_norm_"] + handle.calls["clip_grads_with_norm_"]
    assert through == STEPS and sum(handle.fallbacks.values()) == 0, handle
