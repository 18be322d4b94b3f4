// `halo eval`: scores a model on a dataset. Task metrics (viggo, gsm8k, sql, exact) greedily generate an answer for
// each prompt with the model's forward (quantized when the model has a halo_config.json or flags say so; with
// --device cuda, BF16 KV-cache decoding on the GPU, --batch prompts at once) and compare it with the reference;
// `loss` reports validation loss and perplexity. Predictions go to a JSONL file.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "cli/cli.h"
#include "cli/common.h"
#include "data/dataset.h"
#include "data/metrics.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/generate.h"
#include "util/error.h"

static void usage(void) {
    printf("usage: halo eval --model DIR --data FILE --task viggo|gsm8k|sql|exact|loss [options]\n"
           "  --adapter DIR             a LoRA adapter (PEFT layout, e.g. from finetune --lora) on top of --model;\n"
           "                            runs on the CPU\n"
           "  --split val|train (val)   which part of FILE: with --val-fraction 0 the whole file is the train split;\n"
           "                            by default a seeded 5%% is split off as in finetune (same --seed, same split)\n"
           "  --all                     evaluate every example of FILE (no split)\n"
           "  --limit N                 first N examples only     --max-new-tokens N (256)\n"
           "  --predictions FILE.jsonl  where predictions go (default: predictions.jsonl beside the printed score)\n"
           "  dataset options as in finetune: --preset --prompt-template --answer-template --prompt-field\n"
           "  --answer-field --chat --plain-template --system --seq-len --seed --val-fraction\n"
           "  --batch N (8)             rows per loss batch; prompts decoded at once by GPU generation\n"
           "  --threads N\n"
           "  --device cpu|cuda         default: cuda when a GPU is present. cuda: --task loss runs the forward on the\n"
           "                            GPU (BF16 products, or the model's HALO layers); generation tasks decode on the\n"
           "                            GPU with the KV cache, --batch prompts at a time (BF16 products)\n");
    halo_common_usage();
}

int cmd_eval(int argc, char **argv) {
    const char *model_dir = NULL, *adapter = NULL, *task = NULL, *pred_path = "predictions.jsonl", *split_name = "val", *v;
    long limit = 0, max_new = 256, n, threads = 0, batch = 8;
    int all = 0, use_cuda = -1;
    dataset_config dc;
    dataset_config_default(&dc);
    dc.progress = true;
    dc.shuffle = false;
    halo_common_opts co = halo_common_opts_default();
    for (int i = 1; i < argc; i++) {
        int r = halo_common_opts_parse(&co, argc, argv, &i);
        if (r == 0) r = cli_dataset_opts_parse(&dc, argc, argv, &i);
        if (r < 0) goto bad;
        if (r > 0) continue;
        if (cli_is_flag(argv[i], "--help") || cli_is_flag(argv[i], "-h")) { usage(); return 0; }
        else if ((v = cli_flag_value(argc, argv, &i, "--model"))) model_dir = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--adapter"))) adapter = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--data"))) dc.path = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--task"))) task = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--split"))) split_name = v;
        else if (cli_is_flag(argv[i], "--all")) all = 1;
        else if ((v = cli_flag_value(argc, argv, &i, "--limit"))) { if (cli_parse_range("--limit", v, 0, 2147483647, &limit)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--max-new-tokens"))) { if (cli_parse_range("--max-new-tokens", v, 0, 2147483647, &max_new)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--predictions"))) pred_path = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--seed"))) { if (cli_parse_int("--seed", v, &n)) goto bad; dc.seed = (uint64_t)n; }
        else if ((v = cli_flag_value(argc, argv, &i, "--batch"))) { if (cli_parse_range("--batch", v, 1, 2147483647, &batch)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--threads"))) { if (cli_parse_range("--threads", v, 0, 4096, &threads)) goto bad; }
        else if ((v = cli_flag_value(argc, argv, &i, "--device"))) { if (cli_device_parse(v, &use_cuda)) goto bad; }
        else { fprintf(stderr, "halo eval: unknown option '%s' (see --help)\n", argv[i]); return 2; }
    }
    if (!model_dir || !dc.path || !task) { usage(); return 2; }
    int loss_task = !strcmp(task, "loss");
    halo_metric metric = METRIC_EXACT;
    if (!loss_task && metric_from_name(task, &metric) != HALO_OK) goto bad;
    if (cli_adapter_device(adapter, loss_task, &use_cuda) != HALO_OK) goto bad;   // the loss: adapters on the GPU too
    if (use_cuda < 0) use_cuda = cli_device_auto(&co, model_dir, "eval");
    if (use_cuda && cli_cuda_check() != HALO_OK) goto bad;
    if (batch < 1) { halo_fail("--batch: %ld is not positive", batch); goto bad; }
    if (all) { dc.val_fraction = 0; dc.val_count = 0; split_name = "train"; }
    dataset_split split;
    if (!strcmp(split_name, "val")) split = DATASET_VAL;
    else if (!strcmp(split_name, "train")) split = DATASET_TRAIN;
    else { halo_fail("--split: '%s' is not val or train", split_name); goto bad; }
    halo_set_threads((int)threads);

    llama_model m;
    if (cli_load_model(&m, model_dir, adapter, &co) != HALO_OK) goto bad;
    halo_tokenizer *tok;
    if (tokenizer_load(model_dir, &tok) != HALO_OK) { llama_free(&m); goto bad; }
    dataset *ds = NULL;
    if (dataset_load(&dc, tok, &ds) != HALO_OK || dataset_check_vocab(ds, m.cfg.vocab_size) != HALO_OK) {
        if (ds) dataset_free(ds);
        tokenizer_free(tok); llama_free(&m); goto bad;
    }
    int64_t total = dataset_size(ds, split);
    if (limit > 0 && limit < total) total = limit;
    int rc = HALO_OK;
    if (all) fprintf(stderr, "halo eval: %s on %lld examples of all of %s, %s\n", task, (long long)total, dc.path,
                     halo_common_describe(&co));
    else fprintf(stderr, "halo eval: %s on %lld examples of the %s split of %s, %s\n", task, (long long)total,
                 split_name, dc.path, halo_common_describe(&co));
    if (loss_task) {
        double loss;
        long tokens;
        if (llama_config_check_len(&m.cfg, dc.seq_len, "--seq-len")) {
            dataset_free(ds); tokenizer_free(tok); llama_free(&m); goto bad;
        }
        long max_batches = limit > 0 ? (limit + batch - 1) / batch : 0;
        if (use_cuda) {
            cli_gpu *gpu;
            rc = cli_gpu_open(&gpu, &m, (int)batch, dc.seq_len);
            if (rc == HALO_OK) {
                fprintf(stderr, "halo eval: loss on the GPU (%s)\n",
                        llama_get_halo(&m) ? "the GPU HALO layers' quantized forward" : "BF16 products");
                rc = finetune_val_loss_with(cli_gpu_forward, gpu, ds, split, (int)batch, dc.seq_len, max_batches, &loss,
                                            &tokens);
                cli_gpu_close(gpu);
            }
        } else
            rc = finetune_val_loss(&m, ds, split, (int)batch, dc.seq_len, max_batches, &loss, &tokens);
        if (rc == HALO_OK) printf("loss %.6f | perplexity %.4f | %ld tokens\n", loss, exp(loss), tokens);
    } else {
        FILE *pf = fopen(pred_path, "w");
        if (!pf) rc = halo_fail("%s: cannot create", pred_path);
        gen_options go = gen_options_default();
        go.max_new_tokens = (int)max_new;
        int32_t eot = tokenizer_token_id(tok, "<|eot_id|>");
        go.eos_id = dataset_chat_used(ds) == DATASET_CHAT_LLAMA3 && eot >= 0 ? eot : tokenizer_eos_id(tok);
        if (rc == HALO_OK) rc = gen_read_stops(model_dir, &go);
        // the GPU decodes `batch` prompts at a time, with a cache as long as the longest prompt + max_new needs
        int nb = use_cuda ? (int)(batch < total ? batch : (total > 0 ? total : 1)) : 1;
        int32_t **outs = xmalloc(sizeof(int32_t *) * (size_t)nb);
        for (int k = 0; k < nb; k++) outs[k] = xmalloc(sizeof(int32_t) * (size_t)(max_new > 0 ? max_new : 1));
        int *n_outs = xcalloc((size_t)nb, sizeof(int));
        dataset_pair *pairs = xcalloc((size_t)nb, sizeof(dataset_pair));
        const int32_t **pids = xcalloc((size_t)nb, sizeof(int32_t *));
        int *plen = xcalloc((size_t)nb, sizeof(int));
        cli_gpu_gen *gpu = NULL;
        if (use_cuda && rc == HALO_OK) {
            int longest = 1;
            for (int64_t i = 0; i < total && rc == HALO_OK; i++) {
                dataset_pair p;
                if ((rc = dataset_get_pair(ds, split, i, &p)) == HALO_OK && p.n_prompt_ids > longest) longest = p.n_prompt_ids;
            }
            long len = longest + max_new;
            if (len > m.cfg.max_pos) len = m.cfg.max_pos;   // a longer prompt fails in generation, naming max_pos
            if (rc == HALO_OK && (rc = cli_gpu_gen_open(&gpu, &m, nb, (int)len, "eval")) == HALO_OK) {
                fprintf(stderr, "halo eval: generation on the GPU (KV cache, BF16 products, %d prompts at a time)\n", nb);
                if (llama_get_halo(&m))   // the decoder has no HALO layers
                    fprintf(stderr, "halo eval: note: the GPU decoder does not run the model's %s forward; --device cpu "
                                    "generates with it\n", halo_common_describe(&co));
            }
        }
        double correct = 0;
        double t0 = halo_now();
        for (int64_t i0 = 0; i0 < total && rc == HALO_OK; i0 += nb) {
            int nc = total - i0 < nb ? (int)(total - i0) : nb;
            for (int k = 0; k < nc && rc == HALO_OK; k++) {
                rc = dataset_get_pair(ds, split, i0 + k, &pairs[k]);
                pids[k] = pairs[k].prompt_ids;
                plen[k] = pairs[k].n_prompt_ids;
            }
            if (rc != HALO_OK) break;
            if (use_cuda) rc = cli_gpu_gen_run(gpu, nc, pids, plen, &go, outs, n_outs);
            else rc = gen_generate(&m, pids[0], plen[0], &go, outs[0], &n_outs[0]);
            for (int k = 0; k < nc && rc == HALO_OK; k++) {
                int64_t i = i0 + k;
                int32_t *out = outs[k];
                int n_out = n_outs[k];
                dataset_pair p = pairs[k];
                if (n_out > 0 && gen_is_end(&go, out[n_out - 1])) n_out--;
                char *pred = tokenizer_decode(tok, out, (size_t)n_out, true);
                double score = metric_score(metric, pred, p.answer);
                correct += score;
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "file", p.file);
                cJSON_AddNumberToObject(o, "line", (double)p.line);
                cJSON_AddStringToObject(o, "prediction", pred);
                cJSON_AddStringToObject(o, "reference", p.answer);
                cJSON_AddNumberToObject(o, "correct", score);
                char *line = cJSON_PrintUnformatted(o);
                fprintf(pf, "%s\n", line);
                free(line);
                cJSON_Delete(o);
                free(pred);
                if ((i + 1) % 10 == 0 || i + 1 == total) {
                    double el = halo_now() - t0;
                    fprintf(stderr, "\reval %lld/%lld | accuracy %.2f%% | %.1f s elapsed | ETA %.0f s   ", (long long)(i + 1),
                            (long long)total, 100.0 * correct / (double)(i + 1), el, el / (double)(i + 1) * (double)(total - i - 1));
                }
            }
        }
        cli_gpu_gen_close(gpu);
        for (int k = 0; k < nb; k++) free(outs[k]);
        free(outs); free(n_outs); free(pairs); free(pids); free(plen);
        fprintf(stderr, "\n");
        if (pf) fclose(pf);
        if (rc == HALO_OK)
            printf("%s accuracy %.2f%% (%.0f / %lld) | predictions in %s\n", metric_name(metric),
                   total ? 100.0 * correct / (double)total : 0.0, correct, (long long)total, pred_path);
    }
    dataset_free(ds);
    tokenizer_free(tok);
    llama_free(&m);
    if (rc != HALO_OK) goto bad;
    return 0;
bad:
    fprintf(stderr, "halo eval: %s\n", halo_error());
    return 1;
}
