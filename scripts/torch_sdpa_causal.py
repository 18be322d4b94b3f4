"""For the PyTorch baselines: under torch.compile, transformers 5.17 passes SDPA an explicit causal mask rather than
is_causal=True, and SDPA then takes PyTorch's CUTLASS memory-efficient kernels (85.7 of a 193 ms 1B step on an H100;
README "Where it stands"). install() wraps torch.nn.functional.scaled_dot_product_attention so that a mask over a
square (query length == key length) score matrix becomes is_causal=True. Only valid when that mask is the plain
causal one: no padding in the batch, as in the baselines' random full-length batches."""
import torch
import torch.nn.functional as F

def install(verbose=True):
    orig, seen = F.scaled_dot_product_attention, []
    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        if not seen:
            seen.append(1)
            if verbose: print("sdpa: transformers passed a mask:", attn_mask is not None, "is_causal:", is_causal, flush=True)
        if attn_mask is not None and q.shape[-2] == k.shape[-2]:
            attn_mask, is_causal = None, True
        return orig(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)
    F.scaled_dot_product_attention = torch.nn.functional.scaled_dot_product_attention = sdpa
