"""The encoders the benchmark compares, all built from one fp32 reference BertModel (same weights).

Each system is a function ``Batch -> last hidden state [B, S, H]`` (padded to the batch's longest
sequence); only positions of real tokens are compared, since padding positions differ by design.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import BertModel

import fusedbert
from fusedbert.convert import FAMILIES
from fusedbert.cuda_graphs import Bucket, CudaGraphRunner
from fusedbert.encoder import SLOT_NAMES

from .workloads import Batch

SYSTEMS = ("fusedbert", "fusedbert_graphs", "fusedbert_fp8_graphs", "hf_eager", "hf_sdpa", "nested", "compile", "ort")
# fusedbert's own variants: the ratio to the best peer compares each with the systems not listed here.
OWN_SYSTEMS = ("fusedbert", "fusedbert_graphs", "fusedbert_fp8_graphs")

EncoderFn = Callable[[Batch], torch.Tensor]


def unsupported_reason(system: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``system`` is not run on this device and dtype, or None when it is."""
    if system in ("fusedbert_graphs", "fusedbert_fp8_graphs") and device.type != "cuda":
        return "CUDA graphs need a GPU"
    if system == "fusedbert_fp8_graphs" and dtype not in (torch.float16, torch.bfloat16):
        return "the FP8 FFN serves float16/bfloat16 models"
    if system == "fusedbert_fp8_graphs" and torch.cuda.get_device_capability(device) != (9, 0):
        return "the FP8 FFN's kernels are Hopper's (sm_90)"
    if system == "ort" and device.type != "cpu":
        return "ONNX Runtime is benchmarked on CPU only (CPUExecutionProvider)"
    if system == "ort" and dtype != torch.float32:
        return "the exported graph runs in fp32 only on ORT's CPU provider"
    if device.type == "cpu" and dtype == torch.float16 and system in ("fusedbert", "nested"):
        return "no fp16 CPU kernels (fusedbert's op and the nested fastpath take fp32/bf16 on CPU)"
    return None


def packed_layers(model: BertModel) -> list[dict[str, torch.Tensor]]:
    """Each layer's 12 tensors as the fused op takes them (QKV fused, [out, in] layouts), by slot name."""
    family = FAMILIES["bert"]
    return [dict(zip(SLOT_NAMES, family.layer_weights(layer).packed())) for layer in model.encoder.layer]


def hf_model(reference: BertModel, dtype: torch.dtype, attn_implementation: str) -> BertModel:
    model = copy.deepcopy(reference).to(dtype)
    model.set_attn_implementation(attn_implementation)
    return model


def hf_forward(model: nn.Module) -> EncoderFn:
    return lambda batch: model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state


class NestedEncoder(nn.Module):
    """HF's embeddings followed by ``nn.TransformerEncoder`` holding the same layer weights.

    Called with ``src_key_padding_mask`` in inference mode, PyTorch's fastpath packs the batch into a
    nested tensor and runs ``_transformer_encoder_layer_fwd`` per layer on real tokens only.
    """

    def __init__(self, reference: BertModel):
        super().__init__()
        config = reference.config
        if config.hidden_act != "gelu":
            raise ValueError(f"the nested fastpath has exact GELU only; the model uses {config.hidden_act!r}")
        self.embeddings = copy.deepcopy(reference.embeddings)
        layer = nn.TransformerEncoderLayer(
            config.hidden_size, config.num_attention_heads, config.intermediate_size, dropout=0.0,
            activation="gelu", layer_norm_eps=config.layer_norm_eps, batch_first=True,
            device=reference.device,
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_hidden_layers, enable_nested_tensor=True)
        with torch.no_grad():
            for target, weights in zip(self.encoder.layers, packed_layers(reference)):
                target.self_attn.in_proj_weight.copy_(weights["qkv_weight"])
                target.self_attn.in_proj_bias.copy_(weights["qkv_bias"])
                target.self_attn.out_proj.weight.copy_(weights["attn_out_weight"])
                target.self_attn.out_proj.bias.copy_(weights["attn_out_bias"])
                target.norm1.weight.copy_(weights["ln1_weight"])
                target.norm1.bias.copy_(weights["ln1_bias"])
                target.linear1.weight.copy_(weights["ffn1_weight"])
                target.linear1.bias.copy_(weights["ffn1_bias"])
                target.linear2.weight.copy_(weights["ffn2_weight"])
                target.linear2.bias.copy_(weights["ffn2_bias"])
                target.norm2.weight.copy_(weights["ln2_weight"])
                target.norm2.bias.copy_(weights["ln2_bias"])
        self.eval()

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden = self.embeddings(input_ids=batch.input_ids)
        return self.encoder(hidden, src_key_padding_mask=~batch.is_real)


def takes_fastpath(encoder: NestedEncoder, batch: Batch) -> bool:
    """Whether the call really ran PyTorch's fused encoder-layer kernel (a silent fallback to the
    unfused path would otherwise be timed under the fastpath's name)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        encoder(batch)
    return any(event.name == "aten::_transformer_encoder_layer_fwd" for event in profile.events())


def compiled_forward(model: BertModel, device: torch.device) -> EncoderFn:
    """torch.compile of the HF SDPA model: static shapes (one graph per workload); on CUDA CUDA graphs
    through mode="reduce-overhead"."""
    if device.type == "cuda":
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False, fullgraph=True)

        def forward(batch: Batch) -> torch.Tensor:
            # Each call is a new step: the previous step's graph outputs may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state

        return forward
    return hf_forward(torch.compile(model, dynamic=False, fullgraph=True))


class GraphedFusedEncoder:
    """The fused model replayed from CUDA graphs (fusedbert/cuda_graphs.py), as the handler runs it with
    ``cuda_graph_buckets``: per batch shape met, a bucket of that batch size and length whose token
    capacity is the batch's real tokens rounded up to TOKEN_GRANULE (what a bucket list would give a
    server). Inputs are handed over on the CPU, as a tokenizer makes them (the runner checks the mask and
    counts tokens there, then copies to the GPU), and the output is copied out of the graph's buffers:
    both are timed."""

    TOKEN_GRANULE = 128

    def __init__(self, model: nn.Module, device: torch.device):
        self.runner = CudaGraphRunner(self._forward, [], device, token_level=True, num_inputs=2)
        self.model = model
        self._cpu_inputs: dict[int, tuple[torch.Tensor, torch.Tensor, Batch]] = {}

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @classmethod
    def token_capacity(cls, batch_size: int, seq_len: int, real_tokens: int) -> int:
        """The bucket's token rows for a batch: its real tokens rounded up to TOKEN_GRANULE, at most every
        position."""
        return min(batch_size * seq_len, -(-real_tokens // cls.TOKEN_GRANULE) * cls.TOKEN_GRANULE)

    def __call__(self, batch: Batch) -> torch.Tensor:
        if id(batch) not in self._cpu_inputs:  # once per batch, which is held so that its id stays its own
            size, seq_len = batch.input_ids.shape
            bucket = Bucket(size, seq_len, self.token_capacity(size, seq_len, batch.real_tokens))
            if bucket not in self.runner.buckets:
                self.runner.buckets.append(bucket)
            self._cpu_inputs[id(batch)] = (batch.input_ids.cpu(), batch.attention_mask.cpu(), batch)
        input_ids, attention_mask, _ = self._cpu_inputs[id(batch)]
        return self.runner(input_ids, attention_mask)[0]


class OrtEncoder:
    """The fp32 HF model exported with torch.onnx.export (batch and sequence axes dynamic), run by
    ONNX Runtime's CPU provider with all graph optimizations, on as many threads as torch uses."""

    def __init__(self, reference: BertModel, example: Batch):
        import onnxruntime

        self._workdir = tempfile.TemporaryDirectory(prefix="fusedbert-bench-")
        path = Path(self._workdir.name) / "encoder.onnx"
        dynamic = {0: "batch", 1: "sequence"}
        torch.onnx.export(
            reference, (), str(path),
            kwargs={"input_ids": example.input_ids, "attention_mask": example.attention_mask},
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "last_hidden_state": dynamic},
            dynamo=True, verbose=False,
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            # ORT's own thread pool spins unless told not to; keep it waiting like torch's OpenMP threads.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: Batch) -> torch.Tensor:
        feeds = {"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy()}
        return torch.from_numpy(self.session.run(["last_hidden_state"], feeds)[0])


def build_systems(names: list[str], reference: BertModel, dtype: torch.dtype, device: torch.device,
                  ort_example: Batch) -> tuple[dict[str, EncoderFn], dict[str, str]]:
    """The requested systems runnable on this device and dtype, and the reasons the others are not."""
    systems: dict[str, EncoderFn] = {}
    skipped: dict[str, str] = {}
    sdpa = None
    for name in names:
        reason = unsupported_reason(name, device, dtype)
        if reason:
            skipped[name] = reason
            continue
        if name == "hf_eager":
            systems[name] = hf_forward(hf_model(reference, dtype, "eager"))
        elif name in ("hf_sdpa", "compile"):
            sdpa = sdpa or hf_model(reference, dtype, "sdpa")  # compile wraps the very module hf_sdpa runs
            systems[name] = hf_forward(sdpa) if name == "hf_sdpa" else compiled_forward(sdpa, device)
        elif name == "nested":
            systems[name] = NestedEncoder(reference).to(dtype)
        elif name == "ort":
            systems[name] = OrtEncoder(reference, ort_example)
        elif name == "fusedbert":
            systems[name] = hf_forward(fusedbert.fuse(hf_model(reference, dtype, "sdpa")))
        elif name in ("fusedbert_graphs", "fusedbert_fp8_graphs"):
            fused = fusedbert.fuse(hf_model(reference, dtype, "sdpa"), fp8_ffn=name == "fusedbert_fp8_graphs")
            systems[name] = GraphedFusedEncoder(fused, device)
        else:
            raise ValueError(f"unknown system {name!r}; expected one of {', '.join(SYSTEMS)}")
    return systems, skipped
