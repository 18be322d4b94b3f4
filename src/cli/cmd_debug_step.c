// `halo debug-step`: one forward/backward on a batch from a safetensors file; writes logits, loss and the gradient of
// every parameter in the layout of ../shared/goldens/*_train.safetensors, and optionally runs N AdamW steps on the
// same batch printing each step's loss as a JSON line. This is how halo is checked against another framework.
// With --device cuda the forward, backward and AdamW steps run on the GPU model (BF16 products, fp32 master
// weights and moments) and the gradients are copied back into the same layout.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "train/adamw.h"
#include "util/error.h"

static void usage(void) {
    printf("usage: halo debug-step --model DIR --batch IN.safetensors --out OUT.safetensors\n"
           "                       [--adamw-steps N] [--lr X] [--beta1 B1] [--beta2 B2] [--eps E] [--weight-decay W]\n"
           "                       [--device cpu|cuda]\n"
           "  IN holds int32 `input_ids` [B, T]; the loss is the mean next-token cross-entropy over positions 0..T-2.\n"
           "  OUT gets `logits` [B, T, V] (F32), `loss` [] and `grad.<HF parameter name>` for every parameter.\n"
           "  With --adamw-steps N, prints {\"step\": i, \"loss\": L} before each of N AdamW steps on the same batch\n"
           "  (defaults lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0).\n"
           "  --device cpu|cuda (default: cuda when a GPU is present; cpu for fp32 references): cuda runs forward,\n"
           "  backward and the AdamW steps on the GPU (BF16 products and activations, fp32 master weights, moments\n"
           "  and gradients); logits are the GPU's BF16 logits widened to F32. Expect BF16 agreement with fp32\n"
           "  references (about 1e-2 relative), not fp32 agreement.\n");
    halo_common_usage();
}

int cmd_debug_step(int argc, char **argv) {
    const char *model_dir = NULL, *batch_path = NULL, *out_path = NULL, *v;
    int use_cuda = -1;
    long steps = 0;
    double lr = 1e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.0;
    halo_common_opts co = halo_common_opts_default();
    for (int i = 1; i < argc; i++) {
        int r = halo_common_opts_parse(&co, argc, argv, &i);
        if (r < 0) goto bad;
        if (r > 0) continue;
        if (cli_is_flag(argv[i], "--help") || cli_is_flag(argv[i], "-h")) { usage(); return 0; }
        else if ((v = cli_flag_value(argc, argv, &i, "--model"))) model_dir = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--batch"))) batch_path = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--out"))) out_path = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--adamw-steps"))) { if (cli_parse_int("--adamw-steps", v, &steps)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--lr"))) { if (cli_parse_float("--lr", v, &lr)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--beta1"))) { if (cli_parse_float("--beta1", v, &b1)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--beta2"))) { if (cli_parse_float("--beta2", v, &b2)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--eps"))) { if (cli_parse_float("--eps", v, &eps)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--weight-decay"))) { if (cli_parse_float("--weight-decay", v, &wd)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--device"))) { if (cli_device_parse(v, &use_cuda)) goto bad; }
        else { fprintf(stderr, "halo debug-step: unknown option '%s'\n", argv[i]); usage(); return 2; }
    }
    if (!model_dir || !batch_path || (!out_path && steps == 0)) { usage(); return 2; }
    if (use_cuda < 0) use_cuda = cli_device_auto(&co, model_dir, "debug-step");
    if (use_cuda && cli_cuda_check() != HALO_OK) goto bad;

    llama_model m;
    if (llama_load(&m, model_dir) != HALO_OK) goto bad;
    if (halo_common_apply_dir(&co, &m, model_dir) != HALO_OK) { llama_free(&m); goto bad; }
    st_file f;
    if (st_open(batch_path, &f) != HALO_OK) { llama_free(&m); goto bad; }
    int32_t *ids; int nd; int64_t shape[8];
    int rc = st_read_i32(&f, "input_ids", &ids, &nd, shape);
    st_close(&f);
    if (rc != HALO_OK) { llama_free(&m); goto bad; }
    if (nd != 2) { free(ids); llama_free(&m); halo_fail("%s: input_ids must be 2-D [B, T]", batch_path); goto bad; }
    halo_batch b;
    halo_batch_alloc(&b, (int)shape[0], (int)shape[1]);
    memcpy(b.input_ids, ids, sizeof(int32_t) * (size_t)b.B * b.T);
    free(ids);
    for (size_t i = 0; i < (size_t)b.B * b.T; i++)
        if (b.input_ids[i] < 0 || b.input_ids[i] >= m.cfg.vocab_size) {
            halo_fail("%s: input_ids[%zu] = %d is outside the vocabulary [0, %d)", batch_path, i, b.input_ids[i], m.cfg.vocab_size);
            halo_batch_free(&b); llama_free(&m); goto bad;
        }
    halo_batch_shift_targets(&b);

    size_t nlog = (size_t)b.B * b.T * m.cfg.vocab_size;
    float *logits = xmalloc(sizeof(float) * nlog);
    llama_alloc_grads(&m);
    llama_zero_grads(&m);
    cli_gpu *gpu = NULL;
    float loss;
    if (use_cuda) {
        if (cli_gpu_open(&gpu, &m, b.B, b.T) != HALO_OK) { free(logits); halo_batch_free(&b); llama_free(&m); goto bad; }
        fprintf(stderr, "halo debug-step: on the GPU (BF16 products, fp32 master weights and gradients)\n");
        loss = cli_gpu_logits(gpu, &b, logits);
        if (cli_gpu_grads(gpu, &b, &m) != HALO_OK) {
            cli_gpu_close(gpu); free(logits); halo_batch_free(&b); llama_free(&m); goto bad;
        }
    } else {
        loss = llama_forward(&m, &b, logits);
        llama_backward(&m, &b, 1.0f);
    }
    if (out_path) {
        st_writer *w = st_writer_new();
        int64_t lshape[3] = {b.B, b.T, m.cfg.vocab_size};
        st_writer_add(w, "logits", ST_F32, ST_F32, logits, 3, lshape);
        st_writer_add(w, "loss", ST_F32, ST_F32, &loss, 0, NULL);
        char (*names)[112] = xmalloc(sizeof(*names) * (size_t)m.n_table);
        for (int i = 0; i < m.n_table; i++) {
            snprintf(names[i], sizeof names[i], "grad.%s", m.table[i].name);
            st_writer_add(w, names[i], ST_F32, ST_F32, m.grads + m.table[i].offset, m.table[i].ndim, m.table[i].shape);
        }
        rc = st_writer_write(w, out_path);
        st_writer_free(w);
        free(names);
        if (rc != HALO_OK) { cli_gpu_close(gpu); free(logits); halo_batch_free(&b); llama_free(&m); goto bad; }
        fprintf(stderr, "halo debug-step: loss %.6f; wrote %s\n", loss, out_path);
    }
    if (steps > 0) {
        adamw_config ac = adamw_config_default();
        ac.beta1 = b1; ac.beta2 = b2; ac.eps = eps; ac.weight_decay = wd;
        for (long s = 0; gpu && s < steps; s++) {   // each step's forward gives the loss before its update
            loss = cli_gpu_adamw_step(gpu, &b, &ac, lr, (int)s + 1);
            printf("{\"step\": %ld, \"loss\": %.9g}\n", s, loss);
        }
        adamw_state opt;
        adamw_init(&opt, &ac, m.n_params, m.table, m.n_table);
        for (long s = 0; !gpu && s < steps; s++) {
            if (s > 0) {
                llama_zero_grads(&m);
                loss = llama_forward(&m, &b, NULL);
                llama_backward(&m, &b, 1.0f);
            }
            printf("{\"step\": %ld, \"loss\": %.9g}\n", s, loss);
            adamw_step(&opt, m.params, m.grads, lr);
        }
        adamw_free(&opt);
    }
    cli_gpu_close(gpu);
    free(logits);
    halo_batch_free(&b);
    llama_free(&m);
    return 0;
bad:
    fprintf(stderr, "halo debug-step: %s\n", halo_error());
    return 1;
}
