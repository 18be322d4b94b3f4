// Prompt rendering: "{column}" templates, and the chat formats (Llama 3 as its tokenizer_config.json chat template
// renders it, Llama 2 [INST] with <<SYS>>, and a plain user template). The answer is appended by the caller.
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include "data/data_internal.h"
#include "util/error.h"

int data_template_render(const char *tmpl, data_lookup_fn lookup, void *ctx, const char *what, data_str *out) {
    data_str_clear(out);
    data_str_append(out, "", 0);
    for (const char *p = tmpl; *p;) {
        if (p[0] == '{' && p[1] == '{') { data_str_append(out, "{", 1); p += 2; continue; }
        if (p[0] == '}' && p[1] == '}') { data_str_append(out, "}", 1); p += 2; continue; }
        if (*p == '{') {
            const char *e = strchr(p + 1, '}');
            if (!e) return halo_fail("template \"%s\": '{' without a closing '}' (write {{ for a brace)", tmpl);
            const char *v = lookup(ctx, p + 1, (size_t)(e - p - 1));
            if (!v) return halo_fail("template names '%.*s', which is not a %s", (int)(e - p - 1), p + 1, what);
            data_str_puts(out, v);
            p = e + 1;
            continue;
        }
        size_t n = strcspn(p, "{}");
        if (n == 0) n = 1;   // a lone '}' is kept as text
        data_str_append(out, p, n);
        p += n;
    }
    return HALO_OK;
}

static void append_stripped(data_str *out, const char *s) {
    size_t n = strlen(s);
    data_strip_span(&s, &n);
    data_str_append(out, s, n);
}

// Llama-3-8B-Instruct's template: every message as header + trimmed content + <|eot_id|>, BOS before the first,
// then the assistant header as the generation prompt. It has no default system message.
static void render_llama3(const char *bos_text, const data_msg *m, int n, bool gen_prompt, data_str *out) {
    data_str_puts(out, bos_text);
    for (int i = 0; i < n; i++) {
        data_str_puts(out, "<|start_header_id|>");
        data_str_puts(out, m[i].role);
        data_str_puts(out, "<|end_header_id|>\n\n");
        append_stripped(out, m[i].content);
        data_str_puts(out, "<|eot_id|>");
    }
    if (gen_prompt) data_str_puts(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Llama 2 chat: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s><s>[INST] {user} [/INST]";
// the system message goes into the first user turn.
static int render_llama2(const char *bos_text, const char *eos_text, const data_msg *m, int n, bool gen_prompt,
                         data_str *out) {
    const char *sys = NULL;
    int i = 0;
    if (n > 0 && !strcmp(m[0].role, "system")) sys = m[0].content, i = 1;
    bool expect_user = true;
    for (; i < n; i++) {
        if (!strcmp(m[i].role, "system")) return halo_fail("Llama 2 format: a system message must come first");
        bool is_user = !strcmp(m[i].role, "user");
        if (is_user != expect_user)
            return halo_fail("Llama 2 format: user and assistant turns must alternate, starting with the user");
        if (is_user) {
            data_str_puts(out, bos_text);
            data_str_puts(out, "[INST] ");
            if (sys) {
                data_str_puts(out, "<<SYS>>\n");
                append_stripped(out, sys);
                data_str_puts(out, "\n<</SYS>>\n\n");
                sys = NULL;
            }
            append_stripped(out, m[i].content);
            data_str_puts(out, " [/INST]");
        } else {
            data_str_puts(out, " ");
            append_stripped(out, m[i].content);
            data_str_puts(out, " ");
            data_str_puts(out, eos_text);
        }
        expect_user = !expect_user;
    }
    if (gen_prompt && expect_user) return halo_fail("Llama 2 format: the prompt must end with a user turn");
    return HALO_OK;
}

static const char *plain_lookup(void *ctx, const char *name, size_t len) {
    return len == 6 && !memcmp(name, "prompt", 6) ? (const char *)ctx : NULL;
}

// Plain: system text and a blank line, then each user turn through the template and each earlier answer with a
// blank line after it.
static int render_plain(const char *tmpl, const char *bos_text, const data_msg *m, int n, data_str *out) {
    data_str_puts(out, bos_text);
    data_str turn = {0};
    for (int i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "user")) {
            if (data_template_render(tmpl, plain_lookup, (void *)m[i].content, "placeholder of the plain format "
                                     "(only {prompt} is)", &turn)) { data_str_free(&turn); return HALO_ERR; }
            data_str_append(out, turn.p, turn.n);
        } else {
            data_str_puts(out, m[i].content);
            data_str_puts(out, "\n\n");
        }
    }
    data_str_free(&turn);
    return HALO_OK;
}

int data_chat_render_template(const jinja_template *t, const char *bos_text, const char *eos_text, const data_msg *msgs,
                              int n, bool add_generation_prompt, const cJSON *tools, data_str *out) {
    cJSON *v = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(v, "messages");
    for (int i = 0; i < n; i++) {   // the file's message (tool_calls, ...) with role and content as read
        cJSON *o = msgs[i].raw ? cJSON_Duplicate(msgs[i].raw, 1) : cJSON_CreateObject();
        const int null_content = cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "content"));   // beside tool_calls
        cJSON_DeleteItemFromObjectCaseSensitive(o, "role");
        cJSON_DeleteItemFromObjectCaseSensitive(o, "content");
        cJSON_AddStringToObject(o, "role", msgs[i].role);
        if (null_content) cJSON_AddNullToObject(o, "content");   // as transformers passes None
        else cJSON_AddStringToObject(o, "content", msgs[i].content);
        cJSON_AddItemToArray(arr, o);
    }
    if (tools) cJSON_AddItemToObject(v, "tools", cJSON_Duplicate(tools, 1));
    cJSON_AddStringToObject(v, "bos_token", bos_text);
    cJSON_AddStringToObject(v, "eos_token", eos_text);
    cJSON_AddBoolToObject(v, "add_generation_prompt", add_generation_prompt);
    char *s = NULL;
    int rc = jinja_render(t, v, &s);
    cJSON_Delete(v);
    data_str_clear(out);
    data_str_append(out, "", 0);
    if (rc == HALO_OK) data_str_puts(out, s);
    free(s);
    return rc;
}

int data_chat_check(const data_msg *msgs, int n) {
    int n_user = 0;
    for (int i = 0; i < n; i++) {
        const char *r = msgs[i].role;
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "tool"))
            return halo_fail("unknown role '%s' (expected system, user, assistant or tool)", r);
        n_user += !strcmp(r, "user");
    }
    if (n < 2 || strcmp(msgs[n - 1].role, "assistant"))
        return halo_fail("a conversation must end with an assistant message (the answer to learn)");
    if (!n_user) return halo_fail("a conversation needs a user message");
    return HALO_OK;
}

// The built-in formats have no tool messages or tool calls: a chat template does.
static int builtin_check(const data_msg *msgs, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(msgs[i].role, "tool") || cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(msgs[i].raw, "tool_calls")) > 0)
            return halo_fail("message %d: %s need the model's chat template (--chat template); the built-in formats "
                             "have none", i + 1, !strcmp(msgs[i].role, "tool") ? "tool messages" : "tool calls");
    return HALO_OK;
}

// The first n messages in a built-in format, with the assistant header after them when gen_prompt.
static int render_builtin(dataset_chat fmt, const char *plain_tmpl, const char *bos_text, const char *eos_text,
                          const data_msg *msgs, int n, bool gen_prompt, data_str *out) {
    data_str_clear(out);
    data_str_append(out, "", 0);
    switch (fmt) {
    case DATASET_CHAT_LLAMA3: render_llama3(bos_text, msgs, n, gen_prompt, out); return HALO_OK;
    case DATASET_CHAT_LLAMA2: return render_llama2(bos_text, eos_text, msgs, n, gen_prompt, out);
    case DATASET_CHAT_PLAIN: return render_plain(plain_tmpl, bos_text, msgs, n, out);
    default: return halo_fail("internal: chat format not resolved");
    }
}

int data_chat_render_prompt(dataset_chat fmt, const char *plain_tmpl, const char *bos_text, const char *eos_text,
                            const data_msg *msgs, int n, data_str *out) {
    if (data_chat_check(msgs, n) || builtin_check(msgs, n)) return HALO_ERR;
    return render_builtin(fmt, plain_tmpl, bos_text, eos_text, msgs, n - 1, true, out);
}

int data_chat_render_history(dataset_chat fmt, const char *plain_tmpl, const char *bos_text, const char *eos_text,
                             const data_msg *msgs, int n, data_str *out) {
    if (builtin_check(msgs, n)) return HALO_ERR;
    return render_builtin(fmt, plain_tmpl, bos_text, eos_text, msgs, n, false, out);
}

int data_chat_template_is_llama3(const char *tmpl, const char *bos, const char *eos) {
    jinja_template *t = NULL;
    if (jinja_parse(tmpl, "the tokenizer's chat_template", &t)) { halo_clear_error(); return -1; }
    const data_msg probes[2][3] = {{{"user", "Hi", NULL}, {"assistant", "Hello", NULL}},
                                   {{"system", "Be brief.", NULL}, {"user", "Hi", NULL}, {"assistant", "Hello", NULL}}};
    const int n[2] = {2, 3};
    int res = 1;
    data_str a = {0}, b = {0};
    for (int k = 0; k < 2 && res == 1; k++) {
        if (data_chat_render_template(t, bos, eos, probes[k], n[k] - 1, true, NULL, &a) ||
            data_chat_render_prompt(DATASET_CHAT_LLAMA3, NULL, bos, eos, probes[k], n[k], &b))
            res = -1;
        else if (a.n != b.n || memcmp(a.p, b.p, a.n))
            res = 0;
    }
    halo_clear_error();
    data_str_free(&a);
    data_str_free(&b);
    jinja_free(t);
    return res;
}
