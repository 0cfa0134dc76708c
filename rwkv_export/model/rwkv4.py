"""The RWKV-4 reference model (../shared/spec/RWKV4.md): its block on the shared skeleton (base.py).

Time mix per layer: x_f = x*mix_f + prev*(1-mix_f) for f in k, v, r; k, v linear (in the WKV dtype);
WKV4 (custom_ops/wkv4.py, swappable as `self.wkv`) over channels with state aa, bb, pp; output
O (sigma(R x_r) * y). Channel mix: sigma(Rf x_r) * (Vf relu(Kf x_k)^2), all in the activation dtype.
time_decay / time_first stay in the WKV dtype; float16 rescales every 6 layers (base.py).
"""

from __future__ import annotations

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.model.base import Block, RWKVModel, WKVState
from rwkv_export.model.common import mix
from rwkv_export.model.state import ChannelState
from rwkv_export.ops.wkv4 import wkv4


class RWKV4(RWKVModel):
    """RWKV-4 language model; state `ChannelState` (x_att, aa, bb, pp, x_ffn), each [L, B, C]."""

    WKV = staticmethod(wkv4)
    FP32_PARAMS = frozenset({"att_time_decay", "att_time_first"})

    def _time_mix(
        self, i: int, b: Block, x: torch.Tensor, prev: torch.Tensor, wkv: WKVState, ctx: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, WKVState]:
        k = (mix(x, prev, b.att_time_mix_k) @ b.att_key_weight.t()).to(self.state_dtype)
        v = (mix(x, prev, b.att_time_mix_v) @ b.att_value_weight.t()).to(self.state_dtype)
        r = torch.sigmoid(mix(x, prev, b.att_time_mix_r) @ b.att_receptance_weight.t())
        y, aa, bb, pp = self.wkv(b.att_time_decay, b.att_time_first, k, v, *wkv)
        return (r * y.to(self.dtype)) @ b.att_output_weight.t(), (aa, bb, pp)

    def _channel_mix(self, b: Block, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        kk = torch.relu(mix(x, prev, b.ffn_time_mix_k) @ b.ffn_key_weight.t()) ** 2
        rr = torch.sigmoid(mix(x, prev, b.ffn_time_mix_r) @ b.ffn_receptance_weight.t())
        return rr * (kk @ b.ffn_value_weight.t())

    @classmethod
    def random_state(cls, config: ModelConfig, batch: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> ChannelState:
        """A plausible non-initial state (aa/bb consistent: bb > 0, |aa| <= bb * max|v|), for tests."""
        g = torch.Generator().manual_seed(seed)
        shape = (config.n_layer, batch, config.n_embd)
        x_att = torch.randn(shape, generator=g, dtype=torch.float64)
        bb = torch.rand(shape, generator=g, dtype=torch.float64) * 3 + 0.1
        aa = bb * (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1)
        pp = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        x_ffn = torch.randn(shape, generator=g, dtype=torch.float64)
        return ChannelState(*(t.to(dtype) for t in (x_att, aa, bb, pp, x_ffn)))
