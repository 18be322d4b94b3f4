// The Llama variants in the tests: a config made Qwen2 (q, k, v biases), Qwen3 (per-head q/k norms) or SmolLM3
// (every second layer without RoPE, here), and the new tensors drawn large enough to matter (biases sd 0.3, norm
// weights 1 + 0.3 N(0, 1); HF's init gives 0 and 1).
#ifndef HALO_TEST_VARIANTS_H
#define HALO_TEST_VARIANTS_H
#include "model/llama.h"
#include "test.h"

enum { T_LLAMA = ARCH_LLAMA, T_QWEN2 = ARCH_QWEN2, T_QWEN3 = ARCH_QWEN3, T_SMOLLM3 = ARCH_SMOLLM3, T_PHI3 = ARCH_PHI3 };

static inline void t_make_variant(llama_config *c, int arch) {
    c->arch = (llama_arch)arch;
    c->qk_norm = arch == T_QWEN3;
    c->bias_kinds = arch == T_QWEN2 ? 0x7 : 0;
    c->nope[0] = c->nope[1] = 0;
    if (arch == T_SMOLLM3)
        for (int l = 1; l < c->n_layers && l < LLAMA_MAX_NOPE_LAYERS; l += 2) c->nope[l / 64] |= 1ull << (l % 64);
}

// A bias, or a q/k norm weight.
static inline int t_is_variant_tensor(const char *name) {
    return strstr(name, ".bias") || (strstr(name, "_norm.weight") && strstr(name, "self_attn"));
}

static inline void t_draw_variant_tensors(llama_model *m, unsigned long long seed) {
    unsigned long long s = seed * 31 + 7;
    for (int i = 0; i < m->n_table; i++) {
        const llama_param *p = &m->table[i];
        if (!t_is_variant_tensor(p->name)) continue;
        const float base = strstr(p->name, ".bias") ? 0.0f : 1.0f;
        for (size_t j = 0; j < p->numel; j++) m->params[p->offset + j] = base + (float)(0.3 * t_rand_normal(&s));
    }
}
#endif
