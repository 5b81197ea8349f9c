"""MLflow fixtures: real `mlflow server` processes on free loopback ports, and a tiny PEFT adapter.

- `mlflow_server` (session): URI of one server shared by the session's tests.
- `mlflow_server_handle` (session): the `MlflowServer` behind it (its data dir, pid file).
- `mlflow_server_factory` (function): `make(data_dir=None, port=None) -> MlflowServer`, started;
  every server it made is stopped at the end of the test (for tests that stop/restart a server).
- `unique_name` (function): a fresh experiment name per test.
- `make_toy_adapter(out_dir)`: a real PEFT LoRA adapter of a toy attention block
  (`adapter_config.json`, `adapter_model.safetensors`), and `toy_adapter_pyfunc()`, a pyfunc wrapper
  that loads base weights + adapter (what the registry holds for VGGT, in miniature).
"""

import uuid
from pathlib import Path

import pytest

from tracking.server import MlflowServer

SERVER_START_TIMEOUT = 180  # 2-core CI boxes are slow to import mlflow


@pytest.fixture(scope="session")
def mlflow_server_handle(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start(timeout=SERVER_START_TIMEOUT)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_handle) -> str:
    """URI (`http://127.0.0.1:PORT`) of a real MLflow server for this test session."""
    return mlflow_server_handle.url


@pytest.fixture
def mlflow_server_factory(tmp_path):
    servers = []

    def make(data_dir=None, port=None) -> MlflowServer:
        server = MlflowServer(data_dir or tmp_path / f"mlflow-{len(servers)}", port=port)
        servers.append(server)
        server.start(timeout=SERVER_START_TIMEOUT)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def unique_name(request) -> str:
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"


# ---- a tiny real PEFT adapter ----

def _toy_model_class():
    import torch
    from torch import nn

    class ToyAttention(nn.Module):
        """A ViT-style block with the module names VGGT's blocks use (`attn.qkv`, `attn.proj`)."""

        def __init__(self, dim: int = 16):
            super().__init__()
            self.attn = nn.Module()
            self.attn.qkv = nn.Linear(dim, 3 * dim)
            self.attn.proj = nn.Linear(dim, dim)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            """x: [N, dim] → [N, dim]."""
            q, k, v = self.attn.qkv(x).chunk(3, dim=-1)
            weights = torch.softmax(q @ k.T / q.shape[-1] ** 0.5, dim=-1)
            return self.attn.proj(weights @ v)

    return ToyAttention


def make_toy_adapter(out_dir, rank: int = 4, seed: int = 0):
    """Save base weights and a trained-looking LoRA adapter; return (peft_model, base_path, adapter_dir)."""
    import torch
    from peft import LoraConfig, get_peft_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    base = _toy_model_class()()
    base_path = out_dir / "base.pt"
    torch.save(base.state_dict(), base_path)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["qkv", "proj"]))
    with torch.no_grad():  # B starts at zero (a no-op); make the adapter change the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    adapter_dir = out_dir / "adapter"
    model.save_pretrained(adapter_dir)
    return model, base_path, adapter_dir


def toy_adapter_pyfunc():
    """A pyfunc model (base weights + LoRA adapter → forward on `[N, 16]` rows); mlflow is imported
    only when a test asks for it."""
    import mlflow.pyfunc

    class ToyAdapterModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            import torch
            from peft import PeftModel

            base = _toy_model_class()()
            base.load_state_dict(torch.load(context.artifacts["base"], weights_only=True))
            self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()

        def predict(self, context, model_input: list[list[float]], params=None) -> list[list[float]]:
            import torch

            with torch.no_grad():
                return self.model(torch.tensor(model_input, dtype=torch.float32)).tolist()

    return ToyAdapterModel()
