// Tests for src/data: CSV/JSONL parsing and their file:line errors, templates and presets, chat rendering against
// the Llama 3 golden, the seeded split, padded/packed batch invariants, the resumable iterator, and task metrics.
// Most tests tokenize with a byte-level mock encoder (one id per byte, special tokens matched) so that every id can
// be predicted by hand; the tests at the end use the real tokenizers when this build has them.
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include "data/data_internal.h"
#include "data/dataset.h"
#include "data/metrics.h"
#include "test.h"
#include "util/error.h"

// ---------------------------------------------------------------- mock encoder

#include "test_mock_encoder.h"

// Appends the mock ids of text to v.
static size_t mock_ids(const mock *m, const char *text, int32_t *v) {
    int32_t *ids;
    size_t n;
    mock_encode((void *)m, text, strlen(text), &ids, &n);
    memcpy(v, ids, n * sizeof *ids);
    free(ids);
    return n;
}

// ---------------------------------------------------------------- helpers

static char tmpdir[256];
static const char *tmp_file(const char *name, const char *content) {
    static char path[8][512];
    static int k;
    k = (k + 1) & 7;
    snprintf(path[k], sizeof path[k], "%s/%s", tmpdir, name);
    FILE *f = fopen(path[k], "wb");
    fputs(content, f);
    fclose(f);
    return path[k];
}

static bool has(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }

// ---------------------------------------------------------------- CSV

static void test_csv(void) {
    const char *p = tmp_file("a.csv",
        "mr,ref\r\n"
        "\"f(a[1], b[2])\",plain\r\n"
        "x,\"say \"\"hi\"\", then\nsecond line\n\nfourth\"\n"
        "\n"
        "\"\",\"\"\n"
        "last,\n");
    csv_reader r;
    bool fatal;
    CHECK(csv_open(&r, p) == 0, "open");
    CHECK(csv_next(&r, &fatal) == 1 && r.n_fields == 2 && !strcmp(r.fields[0].p, "mr") && !strcmp(r.fields[1].p, "ref"),
          "header");
    CHECK(csv_next(&r, &fatal) == 1 && r.record_line == 2 && r.n_fields == 2 && !strcmp(r.fields[0].p, "f(a[1], b[2])")
          && !strcmp(r.fields[1].p, "plain"), "quoted comma field: line %lld '%s'", (long long)r.record_line, r.fields[0].p);
    CHECK(csv_next(&r, &fatal) == 1 && r.record_line == 3 && !strcmp(r.fields[0].p, "x") &&
          !strcmp(r.fields[1].p, "say \"hi\", then\nsecond line\n\nfourth"), "doubled quotes + newlines: '%s'", r.fields[1].p);
    CHECK(r.lr.line == 6, "multi-line record consumed lines 3-6 (at %lld)", (long long)r.lr.line);
    CHECK(csv_next(&r, &fatal) == 1 && r.record_line == 8 && r.n_fields == 2 && !r.fields[0].p[0] && !r.fields[1].p[0],
          "empty quoted fields after a blank line: line %lld", (long long)r.record_line);
    CHECK(csv_next(&r, &fatal) == 1 && r.record_line == 9 && r.n_fields == 2 && !strcmp(r.fields[0].p, "last") &&
          !r.fields[1].p[0], "trailing comma is an empty field");
    CHECK(csv_next(&r, &fatal) == 0 && !fatal, "end of file");
    csv_close(&r);

    // Errors name the line where the problem is, counted through an earlier multi-line record.
    p = tmp_file("bad.csv", "a,b\n\"1\n2\",3\n4,x\"y\n5,6\n7,\"open\n8\n");
    CHECK(csv_open(&r, p) == 0, "open");
    csv_next(&r, &fatal);
    CHECK(csv_next(&r, &fatal) == 1 && !strcmp(r.fields[0].p, "1\n2"), "record 1");
    CHECK(csv_next(&r, &fatal) == -1 && !fatal && has(halo_error(), "bad.csv:4: quote inside an unquoted field"),
          "stray quote names line 4: %s", halo_error());
    CHECK(csv_next(&r, &fatal) == 1 && r.record_line == 5 && !strcmp(r.fields[1].p, "6"), "reading goes on after a bad record");
    CHECK(csv_next(&r, &fatal) == -1 && fatal && has(halo_error(), "bad.csv:6: quoted field opened on this line is never closed"),
          "unterminated quote: %s", halo_error());
    csv_close(&r);

    p = tmp_file("bad2.csv", "a,b\n\"x\"y,1\n");
    csv_open(&r, p);
    csv_next(&r, &fatal);
    CHECK(csv_next(&r, &fatal) == -1 && has(halo_error(), "bad2.csv:2: unexpected character 'y' after a closing quote"),
          "text after closing quote: %s", halo_error());
    csv_close(&r);
}

// ---------------------------------------------------------------- loading, templates, errors

// dataset_check_vocab: the mock's ids reach ID_ES (257, the plain format's end of turn), so a model vocabulary of
// 258 holds them and one of 257 is refused, naming the file, the first example's line and the id.
static void test_check_vocab(void) {
    const char *p = tmp_file("v.csv", "question,answer\nq1,a1\nq2,a2\n");
    dataset_config c;
    dataset_config_default(&c);
    c.path = p;
    c.chat = DATASET_CHAT_PLAIN;
    c.val_fraction = 0;
    dataset *ds = NULL;
    CHECK(dataset_load_with(&c, &enc2, &ds) == HALO_OK, "load: %s", halo_error());
    if (!ds) return;
    CHECK(dataset_check_vocab(ds, ID_ES + 1) == HALO_OK, "ids up to %d fit a vocabulary of %d: %s", ID_ES, ID_ES + 1,
          halo_error());
    CHECK(dataset_check_vocab(ds, ID_ES) != HALO_OK && has(halo_error(), "v.csv:2: token id 257 is outside the model's "
                                                                         "vocabulary of 257"),
          "a vocabulary of %d: %s", ID_ES, halo_error());
    CHECK(dataset_check_vocab(ds, 'q') != HALO_OK && has(halo_error(), "v.csv:2: token id "), "vocabulary 'q': %s",
          halo_error());
    dataset_free(ds);
}

static dataset *load(const dataset_config *c, const dataset_encoder *e) {
    dataset *ds = NULL;
    if (dataset_load_with(c, e, &ds)) return NULL;
    return ds;
}

static void test_csv_dataset(void) {
    const char *p = tmp_file("t.csv", "q,a,extra\n\"What is 1,2?\",\"two\nlines\",z\nsecond,ans2,z2\n");
    dataset_config c;
    dataset_config_default(&c);
    c.path = p;
    c.chat = DATASET_CHAT_PLAIN;
    c.prompt_template = "Q: {q} ({extra}) {{literal}}";
    c.answer_template = "{a}";
    c.val_fraction = 0;
    dataset *ds = load(&c, &enc2);
    CHECK(ds != NULL, "load: %s", halo_error());
    if (!ds) return;
    dataset_pair pr;
    CHECK(dataset_size(ds, DATASET_TRAIN) == 2 && dataset_size(ds, DATASET_VAL) == 0, "sizes");
    CHECK(dataset_get_pair(ds, DATASET_TRAIN, 0, &pr) == 0 && !strcmp(pr.prompt_text, "<s>Q: What is 1,2? (z) {literal}\n### Answer:\n")
          && !strcmp(pr.answer, "two\nlines") && pr.line == 2, "template row 1: '%s' / '%s'", pr.prompt_text, pr.answer);
    int32_t want[256];
    size_t n = 0;
    want[n++] = ID_S;
    n += mock_ids(&M2, "Q: What is 1,2? (z) {literal}\n### Answer:\n", want + n);
    CHECK(pr.n_prompt_ids == (int)n && !memcmp(pr.prompt_ids, want, n * sizeof *want), "prompt ids = BOS + text");
    CHECK(dataset_get_pair(ds, DATASET_TRAIN, 1, &pr) == 0 && pr.line == 4 && !strcmp(pr.answer, "ans2"),
          "row 2 starts on line 4 after the two-line field (got %lld)", (long long)pr.line);
    dataset_free(ds);

    c.prompt_template = "Q: {question}";
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "t.csv:1:") && has(halo_error(), "'question', which is not a column")
          && has(halo_error(), "q, a, extra"), "unknown column: %s", halo_error());

    // Default column pairs when no templates are given, and a field-count error with its line.
    p = tmp_file("u.csv", "question,answer\nq1,a1\n\"q\n2\",a2,oops\nq3,a3\n");
    dataset_config_default(&c);
    c.path = p;
    c.chat = DATASET_CHAT_PLAIN;
    c.val_fraction = 0;
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "u.csv:3: 3 fields, the header has 2"), "field count: %s", halo_error());
    c.skip_bad_lines = true;
    ds = load(&c, &enc2);
    CHECK(ds && dataset_size(ds, DATASET_TRAIN) == 2 && dataset_get_stats(ds)->n_bad_lines == 1, "skip_bad_lines keeps 2");
    if (ds) {
        char sum[1024];
        dataset_summary(ds, sum, sizeof sum);
        CHECK(has(sum, "1 bad lines skipped (first: ") && has(sum, "u.csv:3:"), "summary: %s", sum);
        CHECK(dataset_get_pair(ds, DATASET_TRAIN, 1, &pr) == 0 && pr.line == 5 && !strcmp(pr.answer, "a3"), "q3 at line 5");
        dataset_free(ds);
    }
}

static void test_jsonl(void) {
    dataset_config c;
    dataset_config_default(&c);
    c.chat = DATASET_CHAT_PLAIN;
    c.plain_template = "{prompt}=";
    c.val_fraction = 0;
    c.path = tmp_file("a.jsonl", "{\"question\": \"1+1\", \"answer\": \" 2 \"}\n\n{\"question\": \"2+2\", \"answer\": \"4\"}\n"
                                 "{\"question\": \"x\" \n{\"question\": \"3\", \"answr\": \"4\"}\n[1]\n");
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "a.jsonl:4: invalid JSON"), "bad JSON: %s", halo_error());
    c.skip_bad_lines = true;
    dataset *ds = load(&c, &enc2);
    CHECK(ds && dataset_size(ds, DATASET_TRAIN) == 2 && dataset_get_stats(ds)->n_bad_lines == 3 &&
          dataset_get_stats(ds)->n_lines == 6, "skips 3 bad lines of 6");
    dataset_pair pr;
    if (ds) {
        CHECK(!dataset_get_pair(ds, 0, 0, &pr) && !strcmp(pr.prompt_text, "<s>1+1=") && !strcmp(pr.answer, "2"), "pair 0");
        CHECK(!dataset_get_pair(ds, 0, 1, &pr) && pr.line == 3, "pair 1 line");
        dataset_free(ds);
    }
    c.skip_bad_lines = false;
    c.path = tmp_file("b.jsonl", "{\"question\": \"1+1\", \"answer\": \"2\"}\n{\"question\": \"3\", \"answr\": \"4\"}\n");
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "b.jsonl:2: 'answer' is missing or not a string"), "missing: %s", halo_error());
    c.path = tmp_file("c.jsonl", "{\"foo\": 1}\n");
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "c.jsonl:1: no 'text', 'messages' or prompt/answer fields"),
          "undecidable: %s", halo_error());
    c.path = tmp_file("d.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n"
                                 "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "d.jsonl:2: a conversation must end with an assistant message"),
          "messages end: %s", halo_error());
    c.path = tmp_file("e.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"bot\", \"content\": \"yo\"}]}\n");
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "e.jsonl:1: unknown role 'bot'"), "role: %s", halo_error());
    // Default field pairs in order; explicit fields; prompt/answer JSON templates.
    c.path = tmp_file("f.jsonl", "{\"input\": \"i\", \"output\": \"o\", \"prompt\": \"p\", \"completion\": \"c\"}\n");
    ds = load(&c, &enc2);
    CHECK(ds && !dataset_get_pair(ds, 0, 0, &pr) && !strcmp(pr.prompt_text, "<s>p=") && !strcmp(pr.answer, "c"), "prompt/completion first");
    dataset_free(ds);
    // Every default pair is found on its own; the first matching pair in the list wins.
    static const char *const pairs[][2] = {{"prompt", "answer"}, {"prompt", "response"}, {"question", "answer"},
                                           {"instruction", "output"}, {"input", "output"}};
    for (int i = 0; i < 5; i++) {
        char rec[160], name[32];
        snprintf(rec, sizeof rec, "{\"%s\": \"P%d\", \"%s\": \"A%d\"}\n", pairs[i][0], i, pairs[i][1], i);
        snprintf(name, sizeof name, "pair%d.jsonl", i);
        c.path = tmp_file(name, rec);
        char want[16];
        snprintf(want, sizeof want, "<s>P%d=", i);
        ds = load(&c, &enc2);
        char ans[8];
        snprintf(ans, sizeof ans, "A%d", i);
        CHECK(ds && !dataset_get_pair(ds, 0, 0, &pr) && !strcmp(pr.prompt_text, want) && !strcmp(pr.answer, ans),
              "default pair %s/%s: %s", pairs[i][0], pairs[i][1], ds ? "wrong text" : halo_error());
        dataset_free(ds);
    }
    c.path = tmp_file("f2.jsonl", "{\"prompt\": \"p\", \"response\": \"r\", \"answer\": \"a\"}\n");
    ds = load(&c, &enc2);
    CHECK(ds && !dataset_get_pair(ds, 0, 0, &pr) && !strcmp(pr.answer, "a"), "prompt/answer before prompt/response");
    dataset_free(ds);
    c.path = tmp_file("f3.jsonl", "{\"prompt\": \"p\", \"reply\": \"r\"}\n");
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "f3.jsonl:1: no 'text', 'messages' or prompt/answer fields") &&
          has(halo_error(), "--prompt-field"), "no pair: %s", halo_error());
    c.path = tmp_file("f.jsonl", "{\"input\": \"i\", \"output\": \"o\", \"prompt\": \"p\", \"completion\": \"c\"}\n");
    c.prompt_field = "input"; c.answer_field = "output";
    ds = load(&c, &enc2);
    CHECK(ds && !dataset_get_pair(ds, 0, 0, &pr) && !strcmp(pr.prompt_text, "<s>i=") && !strcmp(pr.answer, "o"), "explicit fields");
    dataset_free(ds);
    c.prompt_field = c.answer_field = NULL;
    c.prompt_template = "{input}+{prompt}"; c.answer_template = "{output}{completion}";
    ds = load(&c, &enc2);
    CHECK(ds && !dataset_get_pair(ds, 0, 0, &pr) && !strcmp(pr.prompt_text, "<s>i+p=") && !strcmp(pr.answer, "oc"), "JSON templates");
    dataset_free(ds);
    // Extension decides the format.
    c.path = tmp_file("g.parquet", "x");
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "cannot tell the format"), "extension: %s", halo_error());
}

// ShareGPT's layout ({"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}) gives the same
// examples as the same conversation under "messages"; an unknown speaker is refused naming it.
static void test_sharegpt(void) {
    dataset_config c;
    dataset_config_default(&c);
    c.chat = DATASET_CHAT_LLAMA3;
    c.val_fraction = 0;
    c.path = tmp_file("sg.jsonl", "{\"conversations\": [{\"from\": \"system\", \"value\": \"Be brief.\"}, "
                                  "{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Hello!\"}]}\n");
    dataset *a = load(&c, &enc3);
    c.path = tmp_file("sg_m.jsonl", "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                                    "{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}]}\n");
    dataset *b = load(&c, &enc3);
    dataset_pair pa, pb;
    CHECK(a && b && !dataset_get_pair(a, DATASET_TRAIN, 0, &pa) && !dataset_get_pair(b, DATASET_TRAIN, 0, &pb) &&
          !strcmp(pa.prompt_text, pb.prompt_text) && !strcmp(pa.answer, "Hello!") && pa.n_prompt_ids == pb.n_prompt_ids,
          "ShareGPT conversations == the same messages: %s", a ? "" : halo_error());
    dataset_free(a);
    dataset_free(b);
    c.path = tmp_file("sg_bad.jsonl", "{\"conversations\": [{\"from\": \"narrator\", \"value\": \"x\"}, "
                                      "{\"from\": \"gpt\", \"value\": \"y\"}]}\n");
    CHECK(load(&c, &enc3) == NULL && has(halo_error(), "sg_bad.jsonl:1") && has(halo_error(), "narrator"),
          "unknown speaker: %s", halo_error());
}

// .json files holding one array of records (Alpaca's layout): the same examples as the JSONL form of the records,
// each element's line in its pair and its errors, Alpaca's "input" joined to the instruction, and the refusals.
static void test_json_array(void) {
    dataset_config c;
    dataset_config_default(&c);
    c.chat = DATASET_CHAT_PLAIN;
    c.val_fraction = 0;
    c.path = tmp_file("alpaca.json",
                      "[\n"
                      "  {\n    \"instruction\": \"Add [1, 2]\",\n    \"input\": \"\",\n    \"output\": \"3\"\n  },\n"
                      "  {\"instruction\": \"Say \\\"}]\\\"\", \"input\": \"twice, {please}\", \"output\": \"}]}]\"},\n"
                      "  {\"instruction\": \"Echo\", \"input\": \"  \", \"output\": \"x\"}\n"
                      "]\n");
    char apath[512];
    snprintf(apath, sizeof apath, "%s", c.path);
    dataset *ds = load(&c, &enc2);
    CHECK(ds != NULL, "alpaca.json: %s", halo_error());
    if (!ds) return;
    dataset_pair pr;
    CHECK(dataset_size(ds, DATASET_TRAIN) == 3, "3 records, got %lld", (long long)dataset_size(ds, DATASET_TRAIN));
    CHECK(!dataset_get_pair(ds, DATASET_TRAIN, 0, &pr) && pr.line == 2 && !strcmp(pr.answer, "3") &&
          !strcmp(pr.prompt_text, "<s>Add [1, 2]\n### Answer:\n"), "element 1 (empty input): line %lld '%s'",
          (long long)pr.line, pr.prompt_text);
    CHECK(!dataset_get_pair(ds, DATASET_TRAIN, 1, &pr) && pr.line == 7 && !strcmp(pr.answer, "}]}]") &&
          !strcmp(pr.prompt_text, "<s>Say \"}]\"\n\ntwice, {please}\n### Answer:\n"),
          "element 2 (brackets in strings, input joined): line %lld '%s' / '%s'", (long long)pr.line, pr.prompt_text,
          pr.answer);
    CHECK(!dataset_get_pair(ds, DATASET_TRAIN, 2, &pr) && pr.line == 8 && !strcmp(pr.prompt_text, "<s>Echo\n### Answer:\n"),
          "element 3 (blank input): line %lld '%s'", (long long)pr.line, pr.prompt_text);
    dataset_free(ds);

    // the JSONL form of the same records gives the same prompts and answers
    c.path = tmp_file("alpaca.jsonl",
                      "{\"instruction\": \"Add [1, 2]\", \"input\": \"\", \"output\": \"3\"}\n"
                      "{\"instruction\": \"Say \\\"}]\\\"\", \"input\": \"twice, {please}\", \"output\": \"}]}]\"}\n"
                      "{\"instruction\": \"Echo\", \"input\": \"  \", \"output\": \"x\"}\n");
    dataset *dl = load(&c, &enc2);
    c.path = apath;
    ds = load(&c, &enc2);
    int same = ds && dl && dataset_size(ds, DATASET_TRAIN) == dataset_size(dl, DATASET_TRAIN);
    for (int64_t i = 0; same && i < dataset_size(ds, DATASET_TRAIN); i++) {
        dataset_pair a, b;
        same = !dataset_get_pair(ds, DATASET_TRAIN, i, &a) && !dataset_get_pair(dl, DATASET_TRAIN, i, &b) &&
               a.n_prompt_ids == b.n_prompt_ids && !memcmp(a.prompt_ids, b.prompt_ids, 4 * (size_t)a.n_prompt_ids) &&
               !strcmp(a.answer, b.answer);
    }
    CHECK(same, "JSON array and JSONL forms give the same examples");
    dataset_free(ds);
    dataset_free(dl);

    // errors name the line where the element starts; skip_bad_lines skips a malformed element
    c.path = tmp_file("bad.json", "[{\"prompt\": \"a\", \"completion\": \"b\"},\n {\"prompt\": oops},\n"
                                  " {\"prompt\": \"c\", \"completion\": \"d\"}]");
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "bad.json:2: invalid JSON"), "bad element: %s", halo_error());
    c.skip_bad_lines = true;
    ds = load(&c, &enc2);
    CHECK(ds && dataset_size(ds, DATASET_TRAIN) == 2 && dataset_get_stats(ds)->n_bad_lines == 1,
          "skip_bad_lines keeps 2 of 3 elements");
    dataset_free(ds);
    c.skip_bad_lines = false;
    static const struct { const char *text, *says; } bad[] = {
        {"[{\"prompt\": \"a\", \"completion\": \"b\"},\n{\"prompt\": \"c\"", "bad2.json:2: the record starting here is not closed"},
        {"[{\"prompt\": \"a\", \"completion\": \"b\"}\n", "bad2.json:2: the JSON array is not closed"},
        {"[{\"prompt\": \"a\", \"completion\": \"b\"}]\n{}", "bad2.json:2: text after the JSON array"},
        {"[{\"prompt\": \"a\", \"completion\": \"b\"},\n\n 7]", "bad2.json:3: not a JSON object"},
        {"[{\"prompt\": \"a\", \"completion\": \"b\"},\n,]", "bad2.json:2: an empty record"},
        {"[{\"prompt\": \"a\", \"completion\": \"b\"} {\"prompt\": \"c\", \"completion\": \"d\"}]", "bad2.json:1: text after the JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        c.path = tmp_file("bad2.json", bad[i].text);
        ds = load(&c, &enc2);
        CHECK(ds == NULL && has(halo_error(), bad[i].says), "case %zu: want '%s', got '%s'", i, bad[i].says,
              ds ? "(loaded)" : halo_error());
        dataset_free(ds);
    }
    // text records in a JSON array: the windows name the file's last line as a JSONL file's do (1 here), not the
    // lines of all files so far plus one (the .txt training file's 4 + 2 = 6 before)
    {
        dataset_config tc;
        dataset_config_default(&tc);
        tc.path = tmp_file("tt.txt", "ab\ncd\n---\nef\n");
        tc.val_path = tmp_file("tv.json", "[{\"text\": \"hello\"}]\n");
        tc.seq_len = 4;
        tc.shuffle = false;
        dataset *td = load(&tc, &enc2);
        const int32_t *ids;
        int tn, tls;
        const char *file = NULL;
        int64_t line = -1;
        CHECK(td && dataset_size(td, DATASET_VAL) > 0 &&
              !dataset_get_example(td, DATASET_VAL, 0, &ids, &tn, &tls, NULL, &file, &line) && has(file, "tv.json") &&
              line == 1 && dataset_get_stats(td)->n_lines == 5,
              "val JSON array of text: window line %lld (want 1), %lld lines in all (want 5): %s", (long long)line,
              td ? (long long)dataset_get_stats(td)->n_lines : -1LL, td ? "" : halo_error());
        dataset_free(td);
    }
    c.path = tmp_file("empty.json", "[ ]\n");
    ds = load(&c, &enc2);
    CHECK(ds == NULL || dataset_size(ds, DATASET_TRAIN) == 0, "an empty array gives no examples");
    dataset_free(ds);
}

// The model's own chat template (DATASET_CHAT_TEMPLATE), with the byte-level mock: a ChatML template with a default
// system message renders prompt and answer as transformers would; the loss covers exactly what the whole
// conversation adds to the prompt (answer + "<|im_end|>\n"); AUTO picks the template when the tokenizer has one
// and no Llama 3 tokens, or Llama 3 tokens and a template that renders otherwise than the built-in format; raise_exception fails the record naming its line; a template whose full rendering does not
// extend the prompt's, or a missing template, is refused.
static void test_chat_template(void) {
    static const char *CHATML =
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    dataset_encoder enc = enc2;
    enc.chat_template = CHATML;
    dataset_config c;
    dataset_config_default(&c);
    c.val_fraction = 0;
    c.shuffle = false;
    c.seq_len = 128;
    static const char *ct_data = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                                 "{\"role\": \"assistant\", \"content\": \"Hello!\"}]}\n"
                                 "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                                 "{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", \"content\": \" 4 \"}]}\n";
    c.path = tmp_file("ct.jsonl", ct_data);
    dataset *ds = load(&c, &enc);
    CHECK(ds && dataset_chat_used(ds) == DATASET_CHAT_TEMPLATE, "AUTO with a chat template and no Llama 3 tokens: %s",
          ds ? "another format" : halo_error());
    if (!ds) return;
    dataset_pair pr;
    const char *want0 = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    CHECK(!dataset_get_pair(ds, DATASET_TRAIN, 0, &pr) && !strcmp(pr.prompt_text, want0) && !strcmp(pr.answer, "Hello!"),
          "ChatML prompt with the default system message: '%s'", pr.prompt_text);
    CHECK(!dataset_get_pair(ds, DATASET_TRAIN, 1, &pr) &&
          !strcmp(pr.prompt_text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n") &&
          !strcmp(pr.answer, "4"), "ChatML prompt with the data's system message: '%s' / '%s'", pr.prompt_text, pr.answer);
    halo_batch b;
    halo_batch_alloc(&b, 2, 128);
    dataset_iter it = {0, 0, 0};
    int k = 0;
    dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, &k);
    // row 1: the loss covers " 4 <|im_end|>\n" (the template's content, untrimmed, and its end of turn), nothing else
    const int32_t *tg = b.targets + 128;
    char got[64] = "";
    size_t g = 0;
    int first = -1;
    for (int j = 0; j < 128; j++)
        if (tg[j] >= 0) { if (first < 0) first = j; if (g < sizeof got - 1) got[g++] = (char)(tg[j] < 256 ? tg[j] : '#'); }
    got[g] = 0;
    CHECK(!strcmp(got, " 4 <|im_end|>\n") && first == (int)strlen(pr.prompt_text) - 1, "loss region '%s' from %d", got, first);
    halo_batch_free(&b);
    dataset_free(ds);
    // prompt/answer records go through the template as a user and an assistant message
    c.path = tmp_file("ct2.jsonl", "{\"prompt\": \"Hi\", \"completion\": \"Hello!\"}\n");
    ds = load(&c, &enc);
    CHECK(ds && !dataset_get_pair(ds, DATASET_TRAIN, 0, &pr) && !strcmp(pr.prompt_text, want0), "pairs: %s",
          ds ? pr.prompt_text : halo_error());
    dataset_free(ds);
    // raise_exception names the record
    enc.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                        "{% for m in messages %}{{ m['content'] }}|{% endfor %}";
    c.path = tmp_file("ct.jsonl", ct_data);
    CHECK(load(&c, &enc) == NULL && has(halo_error(), "ct.jsonl:2") && has(halo_error(), "System role not supported"),
          "raise_exception: %s", halo_error());
    // a template that renders the prompt's messages differently once the answer follows: no prefix, refused
    enc.chat_template = "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['content'] }}{% endfor %}";
    CHECK(load(&c, &enc) == NULL && has(halo_error(), "does not start with its rendering of the prompt"),
          "no prefix: %s", halo_error());
    enc.chat_template = NULL;
    c.chat = DATASET_CHAT_TEMPLATE;
    CHECK(load(&c, &enc) == NULL && has(halo_error(), "the tokenizer has no chat template"), "no template: %s", halo_error());

    // A tokenizer with Llama 3's tokens: AUTO keeps the built-in Llama 3 format when the model's template renders the
    // same prompts (Llama 3.0's), and takes the template when it does not (Llama 3.1+'s dated system block).
    dataset_encoder e3 = enc3;
    e3.chat_template = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                       "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                       "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                       "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}";
    c.chat = DATASET_CHAT_AUTO;
    c.path = tmp_file("ct.jsonl", ct_data);
    ds = load(&c, &e3);
    CHECK(ds && dataset_chat_used(ds) == DATASET_CHAT_LLAMA3, "AUTO with Llama 3.0's template: the built-in format (%s)",
          ds ? "another" : halo_error());
    dataset_free(ds);
    e3.chat_template = "{{ bos_token }}{{ '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: "
                       "December 2023<|eot_id|>' }}{% for m in messages %}{% if m['role'] != 'system' %}"
                       "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + "
                       "'<|eot_id|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
                       "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
    ds = load(&c, &e3);
    CHECK(ds && dataset_chat_used(ds) == DATASET_CHAT_TEMPLATE && !dataset_get_pair(ds, DATASET_TRAIN, 0, &pr) &&
          has(pr.prompt_text, "Cutting Knowledge Date"), "AUTO with a Llama 3.1-style template: the template (%s)",
          ds ? pr.prompt_text : halo_error());
    dataset_free(ds);
    e3.chat_template = "{% macro m() %}x{% endmacro %}{{ m() }}";   // a construct the engine refuses
    ds = load(&c, &e3);
    CHECK(ds && dataset_chat_used(ds) == DATASET_CHAT_LLAMA3, "AUTO with a template that cannot run here: the built-in "
          "Llama 3 format (%s)", ds ? "another" : halo_error());
    dataset_free(ds);
}

// ---------------------------------------------------------------- chat formats

static void test_chat_render(void) {
    // Llama 3: the golden conversations rendered by transformers' apply_chat_template.
    const char *gp = test_shared_path("goldens/chat_llama3.json");
    FILE *f = gp ? fopen(gp, "rb") : NULL;
    if (!f) { SKIP("shared goldens/chat_llama3.json not found (set HALO_SHARED)"); }
    else {
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *buf = malloc((size_t)n + 1);
        n = (long)fread(buf, 1, (size_t)n, f);
        buf[n] = 0;
        fclose(f);
        cJSON *g = cJSON_Parse(buf);
        int k = 0;
        cJSON *conv;
        data_str out = {0};
        cJSON_ArrayForEach(conv, g) {
            data_msg m[8] = {{0}};
            int nm = 0;
            cJSON *msg;
            cJSON_ArrayForEach(msg, cJSON_GetObjectItem(conv, "messages")) {
                m[nm].role = cJSON_GetObjectItem(msg, "role")->valuestring;
                m[nm].content = cJSON_GetObjectItem(msg, "content")->valuestring;
                nm++;
            }
            const char *want = cJSON_GetObjectItem(conv, "prompt_text")->valuestring;
            int rc = data_chat_render_prompt(DATASET_CHAT_LLAMA3, NULL, "<|begin_of_text|>", "", m, nm, &out);
            CHECK(rc == 0 && !strcmp(out.p, want), "llama3 golden %d:\n got '%s'\nwant '%s'", k, out.p, want);
            // full_text starts with prompt_text + trimmed answer + <|eot_id|> (what the loss covers).
            const char *full = cJSON_GetObjectItem(conv, "full_text")->valuestring;
            char *ans = data_strip_dup(m[nm - 1].content);
            size_t lp = strlen(want), la = strlen(ans);
            CHECK(!strncmp(full, want, lp) && !strncmp(full + lp, ans, la) && !strncmp(full + lp + la, "<|eot_id|>", 10),
                  "golden %d: full_text = prompt + trimmed answer + <|eot_id|>", k);
            free(ans);
            k++;
        }
        CHECK(k == 5, "5 golden conversations (got %d)", k);
        data_str_free(&out);
        cJSON_Delete(g);
        free(buf);
    }
    data_str out = {0};
    data_msg conv[] = {{"system", " Be brief. ", NULL}, {"user", " Hi ", NULL}, {"assistant", "Hello", NULL}, {"user", "Bye", NULL}, {"assistant", "x", NULL}};
    CHECK(data_chat_render_prompt(DATASET_CHAT_LLAMA2, NULL, "<s>", "</s>", conv, 5, &out) == 0 &&
          !strcmp(out.p, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]"),
          "llama2 multi-turn with system: '%s'", out.p);
    CHECK(data_chat_render_prompt(DATASET_CHAT_LLAMA2, NULL, "<s>", "</s>", conv + 1, 2, &out) == 0 &&
          !strcmp(out.p, "<s>[INST] Hi [/INST]"), "llama2 single turn: '%s'", out.p);
    data_msg bad[] = {{"user", "a", NULL}, {"system", "s", NULL}, {"assistant", "x", NULL}};
    CHECK(data_chat_render_prompt(DATASET_CHAT_LLAMA2, NULL, "<s>", "</s>", bad, 3, &out) == HALO_ERR &&
          has(halo_error(), "system message must come first"), "llama2 late system");
    CHECK(data_chat_render_prompt(DATASET_CHAT_PLAIN, "### Q:\n{prompt}\n### A:\n", "", "", conv, 3, &out) == 0 &&
          !strcmp(out.p, " Be brief. \n\n### Q:\n Hi \n### A:\n"), "plain: '%s'", out.p);
    CHECK(data_chat_render_prompt(DATASET_CHAT_PLAIN, "{question}", "", "", conv + 1, 2, &out) == HALO_ERR &&
          has(halo_error(), "'question'"), "plain unknown placeholder");
    data_str_free(&out);
}

// ---------------------------------------------------------------- presets

static void test_presets(void) {
    dataset_config c;
    dataset_config_default(&c);
    c.preset = "viggo";
    c.val_fraction = 0;
    c.path = tmp_file("v.csv", "mr,ref\n\"inform(name[X], rating[poor])\",\"X is bad, really.\"\n");
    dataset *ds = load(&c, &enc3);
    dataset_pair pr;
    CHECK(ds && !strcmp(dataset_metric_name(ds), "viggo") && dataset_chat_used(ds) == DATASET_CHAT_LLAMA3, "viggo preset");
    if (ds && !dataset_get_pair(ds, 0, 0, &pr)) {
        char want[4096];
        snprintf(want, sizeof want, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n%s\n\n### Target "
                 "sentence:\nX is bad, really.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                 DATASET_VIGGO_INSTRUCTION);
        CHECK(!strcmp(pr.prompt_text, want), "viggo prompt:\n%s", pr.prompt_text);
        CHECK(!strcmp(pr.answer, "inform(name[X], rating[poor])"), "viggo answer");
    }
    dataset_free(ds);
    // The instruction is the one in shared/README.md, character for character.
    const char *rp = test_shared_path("README.md");
    FILE *f = rp ? fopen(rp, "rb") : NULL;
    if (!f) SKIP("shared README.md not found");
    else {
        char line[8192];
        bool found = false;
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            if (!strncmp(line, "Given a target sentence", 23)) found = !strcmp(line, DATASET_VIGGO_INSTRUCTION);
        }
        fclose(f);
        CHECK(found, "DATASET_VIGGO_INSTRUCTION equals the README's line");
    }
    dataset_config_default(&c);
    c.preset = "gsm8k";
    c.chat = DATASET_CHAT_PLAIN;
    c.val_fraction = 0;
    c.path = tmp_file("g.jsonl", "{\"question\": \"Q?\", \"answer\": \"A\\n#### 5\"}\n");
    ds = load(&c, &enc2);
    CHECK(ds && !strcmp(dataset_metric_name(ds), "gsm8k") && !dataset_get_pair(ds, 0, 0, &pr) && !strcmp(pr.answer, "A\n#### 5"),
          "gsm8k preset");
    dataset_free(ds);
    c.preset = "nope";
    CHECK(load(&c, &enc2) == NULL && has(halo_error(), "unknown dataset preset 'nope'"), "unknown preset");
}

// ---------------------------------------------------------------- split

static void split_members(dataset *ds, char *mark, int n) {
    memset(mark, 0, (size_t)n);
    dataset_pair pr;
    for (int64_t i = 0; i < dataset_size(ds, DATASET_VAL); i++) {
        dataset_get_pair(ds, DATASET_VAL, i, &pr);
        mark[atoi(pr.answer)] = 1;
    }
}

static void test_split(void) {
    char *buf = malloc(200 * 64), *p = buf;
    for (int i = 0; i < 200; i++) p += sprintf(p, "{\"prompt\": \"q%d\", \"completion\": \"%d\"}\n", i, i);
    dataset_config c;
    dataset_config_default(&c);
    c.chat = DATASET_CHAT_PLAIN;
    c.path = tmp_file("s.jsonl", buf);
    free(buf);
    char m1[200], m2[200], m3[200];
    dataset *a = load(&c, &enc2), *b = load(&c, &enc2);
    c.seed = 99;
    dataset *d = load(&c, &enc2);
    CHECK(a && b && d, "loads");
    if (!a || !b || !d) return;
    CHECK(dataset_size(a, DATASET_VAL) == 10 && dataset_size(a, DATASET_TRAIN) == 190, "5%% of 200 = 10 val");
    split_members(a, m1, 200);
    split_members(b, m2, 200);
    split_members(d, m3, 200);
    CHECK(!memcmp(m1, m2, 200), "same seed, same split");
    CHECK(memcmp(m1, m3, 200) != 0, "another seed, another split");
    int64_t prev = -1;
    bool ordered = true;
    dataset_pair pr;
    for (int64_t i = 0; i < dataset_size(a, DATASET_VAL); i++) {
        dataset_get_pair(a, DATASET_VAL, i, &pr);
        ordered &= pr.line > prev;
        prev = pr.line;
    }
    CHECK(ordered, "validation keeps file order");
    dataset_free(a); dataset_free(b); dataset_free(d);
    c.val_count = 7;
    a = load(&c, &enc2);
    CHECK(a && dataset_size(a, DATASET_VAL) == 7, "val_count");
    dataset_free(a);
    c.val_count = 0;
    c.val_path = tmp_file("sv.jsonl", "{\"prompt\": \"v\", \"completion\": \"0\"}\n");
    a = load(&c, &enc2);
    CHECK(a && dataset_size(a, DATASET_VAL) == 1 && dataset_size(a, DATASET_TRAIN) == 200, "val_path");
    if (a) {
        dataset_get_pair(a, DATASET_VAL, 0, &pr);
        CHECK(has(pr.file, "sv.jsonl") && pr.line == 1, "val pair names its file");
    }
    dataset_free(a);
}

// ---------------------------------------------------------------- batching

// Examples "q<k>" -> answer of k+1 'a's (variable length); ids are predictable with the mock.
static const char *write_var_examples(int n) {
    char *buf = malloc((size_t)n * 128), *p = buf;
    for (int i = 0; i < n; i++) {
        p += sprintf(p, "{\"prompt\": \"q%d\", \"completion\": \"", i);
        for (int j = 0; j <= (i * 7) % 23; j++) *p++ = 'a';
        p += sprintf(p, "\"}\n");
    }
    *p = 0;
    const char *path = tmp_file("var.jsonl", buf);
    free(buf);
    return path;
}

// Expected ids of example k (BOS, prompt, answer, eot) with the llama2-like mock and plain "{prompt}=" format.
static int expected_ids(int k, int32_t *v, int *n_prompt) {
    char s[64];
    int n = 0;
    v[n++] = ID_S;
    snprintf(s, sizeof s, "q%d=", k);
    n += (int)mock_ids(&M2, s, v + n);
    *n_prompt = n;
    for (int j = 0; j <= (k * 7) % 23; j++) v[n++] = 'a';
    v[n++] = ID_ES;
    return n;
}

// Checks every segment of a batch against the expected example ids and loss region; marks seen examples.
// Returns the number of segments holding an example.
static int check_batch(const halo_batch *b, int seq_len, bool pack, bool loss_all, int *seen, int n_ex, int *bad) {
    int segs = 0;
    for (int r = 0; r < b->B; r++) {
        int t = 0;
        int seg_expect = 0;
        while (t < b->T) {
            size_t o = (size_t)r * b->T + t;
            int s = b->seg[o], len = 0;
            while (t + len < b->T && b->seg[o + len] == s) len++;
            if (s != seg_expect) (*bad)++;
            seg_expect++;
            for (int j = 0; j < len; j++) if (b->pos[o + j] != j) (*bad)++;
            // Decode "q<k>=" to find which example this is; padding has input pad and no loss.
            bool is_pad = b->input_ids[o] != ID_S;
            if (is_pad) {
                for (int j = 0; j < len; j++) if (b->targets[o + j] != -1) (*bad)++;
                if (t + len != b->T) (*bad)++;   // padding only at the row end
            } else {
                int k = 0;
                for (int j = 2; j < len && b->input_ids[o + j] >= '0' && b->input_ids[o + j] <= '9'; j++)
                    k = k * 10 + b->input_ids[o + j] - '0';
                int32_t want[512];
                int np, n = expected_ids(k, want, &np);
                int L = n - 1 > seq_len ? seq_len : n - 1;
                if (len != L && !(len > L && !pack)) (*bad)++;
                for (int j = 0; j < L && j < len; j++) {
                    int32_t tg = (j + 1 >= (loss_all ? 1 : np)) ? want[j + 1] : -1;
                    if (b->input_ids[o + j] != want[j] || b->targets[o + j] != tg) (*bad)++;
                }
                if (!pack) for (int j = L; j < len; j++) if (b->targets[o + j] != -1) (*bad)++;
                if (k >= 0 && k < n_ex) seen[k]++;
                segs++;
                if (!pack && len > L) { // padded row: the rest is the padding segment
                    for (int j = L; j < len; j++) if (b->seg[o + j] == s) { (*bad)++; break; }
                }
            }
            t += len;
        }
    }
    return segs;
}

static void test_batching(void) {
    const int N = 40, T = 24;
    dataset_config c;
    dataset_config_default(&c);
    c.chat = DATASET_CHAT_PLAIN;
    c.plain_template = "{prompt}=";
    c.path = write_var_examples(N);
    c.val_fraction = 0;
    c.seq_len = T;
    for (int mode = 0; mode < 4; mode++) {
        c.pack = mode & 1;
        c.loss_on_all = mode & 2;
        dataset *ds = load(&c, &enc2);
        CHECK(ds != NULL, "load: %s", halo_error());
        if (!ds) return;
        // Truncation counts, computed from the expected lengths.
        int64_t ntr = 0, drop = 0;
        for (int k = 0; k < N; k++) {
            int32_t v[512];
            int np, n = expected_ids(k, v, &np);
            if (n > T + 1) ntr++, drop += n - (T + 1);
        }
        const dataset_stats *st = dataset_get_stats(ds);
        CHECK(st->n_truncated == ntr && st->n_tokens_dropped == drop && ntr > 0,
              "truncation: %lld/%lld vs %lld/%lld", (long long)st->n_truncated, (long long)st->n_tokens_dropped,
              (long long)ntr, (long long)drop);
        halo_batch b;
        halo_batch_alloc(&b, 3, T);
        int seen[64] = {0}, bad = 0, total = 0, k, nb = 0;
        dataset_iter it = {7, 0, 0};
        while (dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, &k) == 0 && k > 0) {
            int segs = check_batch(&b, T, c.pack, c.loss_on_all, seen, N, &bad);
            if (segs != k) bad++;
            total += k;
            nb++;
        }
        bool once = true;
        for (int i = 0; i < N; i++) once &= seen[i] == 1;
        CHECK(bad == 0 && total == N && once, "mode pack=%d all=%d: %d layout errors, %d examples", c.pack, c.loss_on_all, bad, total);
        CHECK(dataset_batches_per_epoch(ds, DATASET_TRAIN, 7, 0, 3) == nb, "batches per epoch %d", nb);
        if (!c.pack) CHECK(nb == (N + 2) / 3, "padded: one example per row");
        else CHECK(nb < (N + 2) / 3, "packed needs fewer batches (%d)", nb);
        halo_batch_free(&b);
        dataset_free(ds);
    }
}

static void test_iterator(void) {
    dataset_config c;
    dataset_config_default(&c);
    c.chat = DATASET_CHAT_PLAIN;
    c.plain_template = "{prompt}=";
    c.path = write_var_examples(30);
    c.val_fraction = 0.2;
    c.seq_len = 32;
    c.pack = true;
    dataset *ds = load(&c, &enc2);
    if (!ds) { CHECK(0, "load: %s", halo_error()); return; }
    halo_batch a, b;
    halo_batch_alloc(&a, 2, 32);
    halo_batch_alloc(&b, 2, 32);
    dataset_iter it = {42, 0, 0}, saved = {0};
    for (int i = 0; i < 11; i++) {   // crosses epoch boundaries (24 train examples, ~3-5 per batch)
        if (i == 6) saved = it;
        dataset_next_batch(ds, DATASET_TRAIN, &it, true, &a, NULL);
    }
    CHECK(it.epoch >= 1, "wrap moved to epoch %lld", (long long)it.epoch);
    dataset_iter r = {saved.seed, saved.epoch, saved.index};   // as restored from a checkpoint
    dataset_iter it2 = saved;
    for (int i = 6; i < 11; i++) {
        dataset_next_batch(ds, DATASET_TRAIN, &r, true, &b, NULL);
        dataset_next_batch(ds, DATASET_TRAIN, &it2, true, &a, NULL);
    }
    CHECK(!memcmp(a.input_ids, b.input_ids, 64 * 4) && !memcmp(a.targets, b.targets, 64 * 4) && r.index == it.index &&
          r.epoch == it.epoch, "restored iterator reproduces the batches");
    // Epoch orders differ but each holds every example once; validation is in file order and does not wrap.
    dataset_iter e0 = {42, 0, 0}, e1 = {42, 1, 0};
    dataset_next_batch(ds, DATASET_TRAIN, &e0, false, &a, NULL);
    dataset_next_batch(ds, DATASET_TRAIN, &e1, false, &b, NULL);
    CHECK(memcmp(a.input_ids, b.input_ids, 64 * 4) != 0, "epochs are shuffled differently");
    dataset_iter v = {42, 0, 0};
    int k, tot = 0;
    while (dataset_next_batch(ds, DATASET_VAL, &v, false, &a, &k) == 0 && k > 0) tot += k;
    CHECK(tot == 6 && v.epoch == 0, "val: 6 examples, one pass (%d)", tot);
    dataset_free(ds);
    c.val_fraction = 0;
    ds = load(&c, &enc2);
    dataset_iter e = {0, 0, 0};
    CHECK(ds && dataset_next_batch(ds, DATASET_VAL, &e, true, &a, NULL) == HALO_ERR && has(halo_error(), "no examples"),
          "wrap on an empty split is an error");
    halo_batch bad;
    halo_batch_alloc(&bad, 1, 16);
    CHECK(dataset_next_batch(ds, DATASET_TRAIN, &it, true, &bad, NULL) == HALO_ERR && has(halo_error(), "seq_len 32"),
          "wrong T rejected");
    halo_batch_free(&bad);
    halo_batch_free(&a);
    halo_batch_free(&b);
    dataset_free(ds);
}

// Llama 3 style examples: the loss covers exactly the answer and <|eot_id|>.
static void test_llama3_loss_region(void) {
    dataset_config c;
    dataset_config_default(&c);
    c.path = tmp_file("l3.jsonl", "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \" U \"},"
                                  " {\"role\": \"assistant\", \"content\": \" ANS \"}]}\n");
    c.val_fraction = 0;
    c.seq_len = 64;
    dataset *ds = load(&c, &enc3);
    if (!ds) { CHECK(0, "load: %s", halo_error()); return; }
    halo_batch b;
    halo_batch_alloc(&b, 1, 64);
    dataset_iter it = {1, 0, 0};
    dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, NULL);
    char got[64] = {0};
    int k = 0;
    bool eot = false;
    for (int t = 0; t < 64; t++) {
        if (b.targets[t] == ID_EOT) eot = true;
        else if (b.targets[t] >= 0) got[k++] = (char)b.targets[t];
    }
    CHECK(!strcmp(got, "ANS") && eot, "loss targets = 'ANS' + <|eot_id|> (got '%s')", got);
    dataset_pair pr;
    dataset_get_pair(ds, 0, 0, &pr);
    CHECK(!strcmp(pr.prompt_text, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
          "llama3 prompt");
    CHECK(pr.prompt_ids[0] == ID_BOT && pr.prompt_ids[1] == ID_SH && b.input_ids[0] == ID_BOT && b.input_ids[1] == ID_SH,
          "one BOS, then the header");
    halo_batch_free(&b);
    dataset_free(ds);
}

// The loss targets of row 0 of the first batch, as text (special ids as '#'), and how many there are.
static int loss_text(dataset *ds, char *got, size_t cap) {
    halo_batch b;
    halo_batch_alloc(&b, 1, 256);
    dataset_iter it = {1, 0, 0};
    if (dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, NULL)) { halo_batch_free(&b); got[0] = 0; return -1; }
    size_t g = 0;
    int n = 0;
    for (int t = 0; t < 256; t++)
        if (b.targets[t] >= 0) { n++; if (g + 1 < cap) got[g++] = (char)(b.targets[t] < 256 ? b.targets[t] : '#'); }
    got[g] = 0;
    halo_batch_free(&b);
    return n;
}

// A conversation with two assistant turns: both in the loss, each with its end of turn (Llama 3 built in, Llama 2,
// plain, a ChatML template); --loss-last-turn keeps the last alone; a template that renders an earlier turn
// differently as history (dropping its reasoning) leaves that turn out and counts the conversation.
static void test_multi_turn_loss(void) {
    static const char *conv = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", "
                              "\"content\": \"A1 <think>r</think>a1\"}, {\"role\": \"user\", \"content\": \"Q2\"}, "
                              "{\"role\": \"assistant\", \"content\": \"A2\"}]}\n";
    static const char *CHATML =
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    // the same, but an assistant turn that is not the last one loses what precedes "</think>" (as Qwen3's does)
    static const char *DROPS =
        "{% for message in messages %}{% if message['role'] == 'assistant' and not loop.last and '</think>' in message['content'] %}"
        "{{ '<|im_start|>assistant\\n' + message['content'].split('</think>')[-1] + '<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    struct {
        const char *what;
        dataset_chat chat;
        const char *tmpl;
        bool last_turn;
        const char *want;
        int64_t untrained;
    } cases[] = {
        {"llama3", DATASET_CHAT_LLAMA3, NULL, false, "A1 <think>r</think>a1#A2#", 0},
        {"llama3, --loss-last-turn", DATASET_CHAT_LLAMA3, NULL, true, "A2#", 0},
        {"llama2", DATASET_CHAT_LLAMA2, NULL, false, " A1 <think>r</think>a1 #A2#", 0},
        {"plain", DATASET_CHAT_PLAIN, NULL, false, "A1 <think>r</think>a1\n\nA2#", 0},
        {"ChatML template", DATASET_CHAT_TEMPLATE, NULL, false, "A1 <think>r</think>a1<|im_end|>\nA2<|im_end|>\n", 0},
        {"a template that drops earlier reasoning", DATASET_CHAT_TEMPLATE, "drops", false, "A2<|im_end|>\n", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dataset_encoder enc = cases[i].chat == DATASET_CHAT_LLAMA3 ? enc3 : enc2;
        if (cases[i].chat == DATASET_CHAT_TEMPLATE) enc.chat_template = cases[i].tmpl ? DROPS : CHATML;
        dataset_config c;
        dataset_config_default(&c);
        c.path = tmp_file("mt.jsonl", conv);
        c.val_fraction = 0;
        c.seq_len = 256;
        c.chat = cases[i].chat;
        c.loss_last_turn = cases[i].last_turn;
        dataset *ds = load(&c, &enc);
        if (!ds) { CHECK(0, "%s: load: %s", cases[i].what, halo_error()); continue; }
        char got[256];
        const int n = loss_text(ds, got, sizeof got);
        const dataset_stats *st = dataset_get_stats(ds);
        CHECK(!strcmp(got, cases[i].want) && st->n_loss_tokens == n && st->n_history_untrained == cases[i].untrained,
              "%s: loss targets '%s' (want '%s'), %d of them (stats %lld), %lld conversations with untrained history",
              cases[i].what, got, cases[i].want, n, (long long)st->n_loss_tokens, (long long)st->n_history_untrained);
        const int32_t *ids;
        const uint8_t *in_loss;
        int en, ls;
        CHECK(!dataset_get_example(ds, DATASET_TRAIN, 0, &ids, &en, &ls, &in_loss, NULL, NULL) &&
              (in_loss != NULL) == (!cases[i].last_turn && !cases[i].untrained), "%s: a loss mask exactly when earlier "
              "turns train", cases[i].what);
        dataset_free(ds);
    }
}

// Function calling through a chat template: the record's tools, an assistant turn that only calls a tool (content
// null), the tool's reply; the call and the final answer are in the loss, the tool's reply is not. The built-in
// formats refuse tool messages, tool calls and tools, naming the flag to use.
static void test_tool_calls(void) {
    static const char *TOOLS_TMPL =
        "{%- if tools %}{{ '<|im_start|>system\\nTools:' }}{% for t in tools %}{{ ' ' + t.function.name }}{% endfor %}"
        "{{ '<|im_end|>\\n' }}{% endif %}"
        "{%- for m in messages %}"
        "{%- if m.role == 'assistant' and m.tool_calls %}{{ '<|im_start|>assistant\\n' }}{% for c in m.tool_calls %}"
        "{{ '<call>' + c.function.name + ' ' + (c.function.arguments | tojson) + '</call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
        "{%- else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}"
        "{%- endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    static const char *rec =
        "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"weather\"}}], \"messages\": ["
        "{\"role\": \"user\", \"content\": \"Paris?\"}, {\"role\": \"assistant\", \"content\": null, \"tool_calls\": "
        "[{\"type\": \"function\", \"function\": {\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}}]}, "
        "{\"role\": \"tool\", \"content\": \"21C\"}, {\"role\": \"assistant\", \"content\": \"Warm.\"}]}\n";
    dataset_encoder enc = enc2;
    enc.chat_template = TOOLS_TMPL;
    dataset_config c;
    dataset_config_default(&c);
    c.path = tmp_file("tools.jsonl", rec);
    c.val_fraction = 0;
    c.seq_len = 256;
    c.chat = DATASET_CHAT_TEMPLATE;
    dataset *ds = load(&c, &enc);
    if (!ds) { CHECK(0, "tool calls: load: %s", halo_error()); return; }
    dataset_pair pr;
    CHECK(!dataset_get_pair(ds, DATASET_TRAIN, 0, &pr) &&
          !strcmp(pr.prompt_text, "<|im_start|>system\nTools: weather<|im_end|>\n<|im_start|>user\nParis?<|im_end|>\n"
                                  "<|im_start|>assistant\n<call>weather {\"city\": \"Paris\"}</call><|im_end|>\n"
                                  "<|im_start|>tool\n21C<|im_end|>\n<|im_start|>assistant\n"),
          "tool calls: the template sees the tools, the call's arguments and the tool's reply: '%s'", pr.prompt_text);
    char got[256];
    loss_text(ds, got, sizeof got);
    CHECK(!strcmp(got, "<call>weather {\"city\": \"Paris\"}</call><|im_end|>\nWarm.<|im_end|>\n"),
          "tool calls: the call and the answer in the loss, the tool's reply not: '%s'", got);
    dataset_free(ds);
    c.chat = DATASET_CHAT_PLAIN;
    CHECK(!load(&c, &enc) && has(halo_error(), "tools.jsonl:1:") && has(halo_error(), "--chat template"),
          "tools with a built-in format: refused naming --chat template: %s", halo_error());
    c.path = tmp_file("tools2.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": "
                                      "\"assistant\", \"content\": null}]}\n");
    c.chat = DATASET_CHAT_TEMPLATE;
    CHECK(!load(&c, &enc) && has(halo_error(), "tools2.jsonl:1: message 2") && has(halo_error(), "'tool_calls'"),
          "content null without tool calls: refused: %s", halo_error());
}

static void test_text(void) {
    const char *txt = "ab\ncd\n---\nef\n";
    dataset_config c;
    dataset_config_default(&c);
    c.path = tmp_file("t.txt", txt);
    c.seq_len = 4;
    c.val_fraction = 0;
    c.shuffle = false;
    dataset *ds = load(&c, &enc2);
    if (!ds) { CHECK(0, "load: %s", halo_error()); return; }
    // One document: BOS + 13 bytes = 14 tokens -> windows start at 0, 4, 8, 12 (the last holds 2 tokens).
    int32_t stream[32];
    int n = 0;
    stream[n++] = ID_S;
    n += (int)mock_ids(&M2, txt, stream + n);
    CHECK(dataset_size(ds, DATASET_TRAIN) == 4, "4 windows (%lld)", (long long)dataset_size(ds, 0));
    halo_batch b;
    halo_batch_alloc(&b, 4, 4);
    dataset_iter it = {0, 0, 0};
    int k;
    dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, &k);
    int bad = 0;
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 4; t++) {
            int s = r * 4 + t;
            int32_t in = s < n ? stream[s] : -2, tg = s + 1 < n ? stream[s + 1] : -1;
            if (s < n - 1 && (b.input_ids[r * 4 + t] != in || b.targets[r * 4 + t] != tg)) bad++;
            if (s >= n - 1 && b.targets[r * 4 + t] != -1) bad++;
        }
    CHECK(k == 4 && bad == 0, "text windows cover the stream with next-token targets (%d bad)", bad);
    CHECK(dataset_get_pair(ds, 0, 0, &(dataset_pair){0}) == HALO_ERR, "no pairs for text");
    dataset_free(ds);
    c.doc_separator = "---";
    ds = load(&c, &enc2);
    if (ds) {
        dataset_iter i2 = {0, 0, 0};
        dataset_next_batch(ds, DATASET_TRAIN, &i2, false, &b, &k);
        // BOS a b \n c d \n BOS e f \n: the second BOS is at stream position 7 (row 1, column 3).
        CHECK(b.input_ids[7] == ID_S && b.input_ids[0] == ID_S && b.targets[6] == ID_S, "doc separator starts a new BOS document");
        dataset_free(ds);
    }
    halo_batch_free(&b);
}

// ---------------------------------------------------------------- metrics

static void test_metrics(void) {
    halo_metric m;
    CHECK(metric_from_name("viggo", &m) == 0 && m == METRIC_VIGGO && metric_from_name("bleu", &m) == HALO_ERR, "names");
    const char *ref = "inform(name[BioShock], release_year[2007], genres[action-adventure, role-playing, shooter])";
    CHECK(metric_score(METRIC_VIGGO, ref, ref) == 1, "viggo self");
    CHECK(metric_score(METRIC_VIGGO, "inform(genres[action-adventure,role-playing,  shooter], name[BioShock],release_year[2007]) ",
                       ref) == 1, "viggo: attribute order and spaces do not matter");
    CHECK(metric_score(METRIC_VIGGO, "inform(name[BioShock], release_year[2008], genres[action-adventure, role-playing, shooter])",
                       ref) == 0, "viggo: a wrong value fails");
    CHECK(metric_score(METRIC_VIGGO, "inform(name[BioShock], genres[action-adventure, role-playing, shooter])", ref) == 0,
          "viggo: a missing attribute fails");
    CHECK(metric_score(METRIC_VIGGO, "give_opinion(name[BioShock], release_year[2007], genres[action-adventure, role-playing, shooter])",
                       ref) == 0, "viggo: another function fails");
    CHECK(metric_score(METRIC_VIGGO, "inform(name[BioShock], release_year[2007], genres[role-playing, action-adventure, shooter])",
                       ref) == 0, "viggo: value lists keep their order");
    CHECK(metric_score(METRIC_VIGGO, "inform name[BioShock]", ref) == 0 && metric_score(METRIC_VIGGO, "", ref) == 0 &&
          metric_score(METRIC_VIGGO, ref + 1, ref) == 0, "viggo: malformed fails");
    char *cn = metric_viggo_canonical(" request( specifier[ \"weird\" ] , name[X])");
    CHECK(cn && !strcmp(cn, "request(name[X], specifier[\"weird\"])"), "canonical: %s", cn);
    free(cn);
    cn = metric_viggo_canonical("request_explanation()");
    CHECK(cn && !strcmp(cn, "request_explanation()"), "empty attribute list");
    free(cn);
    // The real validation file: every reference matches itself and its reversed attribute order.
    const char *vp = test_shared_path("data/viggo/valid.csv");
    csv_reader r;
    bool fatal;
    if (!vp || csv_open(&r, vp)) SKIP("shared data/viggo/valid.csv not found");
    else {
        csv_next(&r, &fatal);
        int rows = 0, ok = 0;
        while (csv_next(&r, &fatal) == 1 && rows < 50) {
            const char *mr = r.fields[0].p;
            rows++;
            char *canon = metric_viggo_canonical(mr);
            ok += metric_score(METRIC_VIGGO, mr, mr) == 1 && canon && metric_score(METRIC_VIGGO, canon, mr) == 1;
            free(canon);
        }
        CHECK(rows == 50 && ok == rows, "viggo valid.csv: %d/%d rows score 1 against themselves", ok, rows);
        csv_close(&r);
    }
    CHECK(metric_score(METRIC_GSM8K, "so 1,000 total\n#### 1,000 ", "x #### 1000") == 1, "gsm8k commas");
    CHECK(metric_score(METRIC_GSM8K, "#### 5 #### 18", "#### 18") == 1, "gsm8k: the last ####");
    CHECK(metric_score(METRIC_GSM8K, "#### 19", "#### 18") == 0 && metric_score(METRIC_GSM8K, "18", "#### 18") == 0,
          "gsm8k wrong / no ####");
    char *ga = metric_gsm8k_answer("a\n#### -1,234.5\n");
    CHECK(ga && !strcmp(ga, "-1234.5"), "gsm8k answer '%s'", ga);
    free(ga);
    CHECK(metric_score(METRIC_SQL, " SELECT a FROM t \n", "SELECT a FROM t") == 1 &&
          metric_score(METRIC_SQL, "SELECT a FROM  t", "SELECT a FROM t") == 0, "sql");
    CHECK(metric_score(METRIC_EXACT, "a", "a") == 1 && metric_score(METRIC_EXACT, " a\n", "a") == 1 &&
          metric_score(METRIC_EXACT, "a b", "a  b") == 0, "exact");
}

// ---------------------------------------------------------------- real tokenizers

static char *read_all(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)*n + 1);
    *n = (long)fread(buf, 1, (size_t)*n, f);
    buf[*n] = 0;
    fclose(f);
    return buf;
}

// Loads a shared tokenizer; NULL (with a SKIP) when the shared data or the tokenizer implementation is missing.
static halo_tokenizer *real_tokenizer(const char *rel) {
    const char *p = test_shared_path(rel);
    halo_tokenizer *tok = NULL;
    if (!p || access(p, R_OK)) { SKIP("shared %s not found (set HALO_SHARED)", rel); return NULL; }
    if (tokenizer_load(p, &tok)) {
        if (has(halo_error(), "not implemented")) { SKIP("tokenizer not implemented in this build: %s", halo_error()); return NULL; }
        CHECK(0, "tokenizer_load %s: %s", rel, halo_error());
        return NULL;
    }
    return tok;
}

// The golden conversations through dataset_load: prompt text and ids as transformers renders them, and the
// training example = prompt_ids + the trimmed answer's ids + <|eot_id|> = a prefix of full_ids.
// The golden conversations of goldens/chat_llama3.json (*g, parsed) as a JSONL dataset in chat format `chat`.
static dataset *golden_dataset(halo_tokenizer *tok, dataset_chat chat, const char *name, cJSON **g) {
    long n;
    char *buf = read_all(test_shared_path("goldens/chat_llama3.json"), &n);
    *g = buf ? cJSON_Parse(buf) : NULL;
    free(buf);
    CHECK(*g && cJSON_GetArraySize(*g) == 5, "golden file");
    data_str lines = {0};
    cJSON *conv;
    cJSON_ArrayForEach(conv, *g) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "messages", cJSON_Duplicate(cJSON_GetObjectItem(conv, "messages"), 1));
        char *s = cJSON_PrintUnformatted(o);
        data_str_puts(&lines, s);
        data_str_puts(&lines, "\n");
        free(s);
        cJSON_Delete(o);
    }
    dataset_config c;
    dataset_config_default(&c);
    c.path = tmp_file(name, lines.p ? lines.p : "");
    c.val_fraction = 0;
    c.shuffle = false;
    c.seq_len = 256;
    c.chat = chat;
    dataset *ds = NULL;
    CHECK(dataset_load(&c, tok, &ds) == 0 && dataset_chat_used(ds) == (chat == DATASET_CHAT_AUTO ? DATASET_CHAT_LLAMA3 : chat),
          "load golden (%s): %s", name, halo_error());
    data_str_free(&lines);
    return ds;
}

// Llama 3's own chat_template (tokenizer_config.json) through the Jinja engine: the goldens' prompt text and ids,
// and, since that template always ends with the assistant header, training ids equal to the whole full_ids.
static void test_real_llama3_template(void) {
    halo_tokenizer *tok = real_tokenizer("tokenizers/llama3");
    if (!tok) return;
    cJSON *g = NULL;
    dataset *ds = golden_dataset(tok, DATASET_CHAT_TEMPLATE, "golden_t.jsonl", &g);
    cJSON *conv;
    halo_batch b;
    halo_batch_alloc(&b, 5, 256);
    dataset_iter it = {0, 0, 0};
    int k = 0, i = 0, ok_p = 0, ok_ids = 0, ok_full = 0;
    if (ds) dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, &k);
    cJSON_ArrayForEach(conv, g) {
        if (!ds || i >= k) break;
        dataset_pair pr;
        dataset_get_pair(ds, DATASET_TRAIN, i, &pr);
        ok_p += !strcmp(pr.prompt_text, cJSON_GetObjectItem(conv, "prompt_text")->valuestring);
        cJSON *pid = cJSON_GetObjectItem(conv, "prompt_ids"), *fid = cJSON_GetObjectItem(conv, "full_ids");
        bool same = pr.n_prompt_ids == cJSON_GetArraySize(pid);
        for (int j = 0; same && j < pr.n_prompt_ids; j++) same = pr.prompt_ids[j] == cJSON_GetArrayItem(pid, j)->valueint;
        ok_ids += same;
        const int32_t *in = b.input_ids + (size_t)i * 256, *tg = b.targets + (size_t)i * 256;
        int L = 0;
        while (L < 256 && b.seg[(size_t)i * 256 + L] == 0) L++;
        bool full = L + 1 == cJSON_GetArraySize(fid) && tg[L - 1] == cJSON_GetArrayItem(fid, L)->valueint;
        for (int j = 0; full && j < L; j++) full = in[j] == cJSON_GetArrayItem(fid, j)->valueint;
        ok_full += full;
        i++;
    }
    CHECK(k == 5 && ok_p == 5 && ok_ids == 5 && ok_full == 5,
          "Llama 3 template vs goldens: %d examples, prompt_text %d/5, prompt_ids %d/5, training ids == full_ids %d/5",
          k, ok_p, ok_ids, ok_full);
    halo_batch_free(&b);
    dataset_free(ds);
    cJSON_Delete(g);
    tokenizer_free(tok);
}

// A two-turn conversation through a real tokenizer in chat format `chat`: the training ids are [bos_id, when the
// format writes it apart] + the ids of `prompt` (the whole rendering up to the last answer, encoded as one text) + the
// last answer's, and the loss decodes to `want_loss` (both answers with their end of turn). Llama 3 (byte-level) and
// Llama 2 (SentencePiece-style: a "▁" prepended to each encoded text, so pieces encoded apart would differ).
static void multi_turn_real(const char *tokenizer, dataset_chat chat, int bos_apart, const char *prompt,
                            const char *want_loss) {
    halo_tokenizer *tok = real_tokenizer(tokenizer);
    if (!tok) return;
    dataset_config c;
    dataset_config_default(&c);
    c.path = tmp_file("mt.jsonl", "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": "
                                  "\"user\", \"content\": \"Hi there\"}, {\"role\": \"assistant\", \"content\": \"Hello! "
                                  "How can I help?\"}, {\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": "
                                  "\"assistant\", \"content\": \"4\"}]}\n");
    c.val_fraction = 0;
    c.seq_len = 128;
    c.chat = chat;
    dataset *ds = NULL;
    CHECK(dataset_load(&c, tok, &ds) == HALO_OK, "%s: load: %s", tokenizer, halo_error());
    if (ds) {
        const int32_t *ids;
        const uint8_t *in_loss;
        int n, ls;
        dataset_get_example(ds, DATASET_TRAIN, 0, &ids, &n, &ls, &in_loss, NULL, NULL);
        int32_t *want;
        size_t nw;
        tokenizer_encode(tok, prompt, strlen(prompt), false, &want, &nw);
        const int off = bos_apart ? 1 : 0;
        CHECK(in_loss && (!bos_apart || ids[0] == tokenizer_bos_id(tok)) && (size_t)n > nw + off &&
              !memcmp(ids + off, want, nw * sizeof *ids), "%s, two turns: the prompt's %zu ids are its whole "
              "rendering's, with a loss mask", tokenizer, nw);
        int32_t got[64];
        int k = 0;
        for (int j = 1; j < n && in_loss && k < 64; j++) if (in_loss[j]) got[k++] = ids[j];
        char *text = tokenizer_decode(tok, got, (size_t)k, false);
        CHECK(text && !strcmp(text, want_loss) && dataset_get_stats(ds)->n_history_untrained == 0,
              "%s: the loss covers both answers: '%s' (want '%s')", tokenizer, text ? text : "", want_loss);
        free(text);
        free(want);
        dataset_free(ds);
    }
    tokenizer_free(tok);
}

static void test_real_multi_turn(void) {
    multi_turn_real("tokenizers/llama3", DATASET_CHAT_AUTO, 0,
                    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant"
                    "<|end_header_id|>\n\nHello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>"
                    "\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                    "Hello! How can I help?<|eot_id|>4<|eot_id|>");
    multi_turn_real("tokenizers/llama2", DATASET_CHAT_LLAMA2, 1,
                    "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! How can I help? </s><s>[INST] 2+2? [/INST]",
                    "Hello! How can I help? </s> 4</s>");   // (the history's " </s>" as the format writes it)
}

static void test_real_llama3(void) {
    halo_tokenizer *tok = real_tokenizer("tokenizers/llama3");
    if (!tok) return;
    cJSON *g = NULL;
    dataset *ds = golden_dataset(tok, DATASET_CHAT_AUTO, "golden.jsonl", &g);
    cJSON *conv;
    int32_t eot = tokenizer_token_id(tok, "<|eot_id|>");
    halo_batch b;
    halo_batch_alloc(&b, 5, 256);
    dataset_iter it = {0, 0, 0};
    int k = 0;
    if (ds) dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, &k);
    CHECK(k == 5, "5 examples in a padded batch");
    int i = 0;
    cJSON_ArrayForEach(conv, g) {
        if (!ds) break;
        dataset_pair pr;
        dataset_get_pair(ds, DATASET_TRAIN, i, &pr);
        const char *want = cJSON_GetObjectItem(conv, "prompt_text")->valuestring;
        cJSON *pid = cJSON_GetObjectItem(conv, "prompt_ids"), *fid = cJSON_GetObjectItem(conv, "full_ids");
        CHECK(!strcmp(pr.prompt_text, want), "golden %d prompt_text", i);
        bool same = pr.n_prompt_ids == cJSON_GetArraySize(pid);
        for (int j = 0; same && j < pr.n_prompt_ids; j++) same = pr.prompt_ids[j] == cJSON_GetArrayItem(pid, j)->valueint;
        CHECK(same, "golden %d prompt_ids (%d ids)", i, pr.n_prompt_ids);
        // Row i: inputs up to the first padding, plus the last target, is the training example.
        const int32_t *in = b.input_ids + (size_t)i * 256, *tg = b.targets + (size_t)i * 256;
        int L = 0;
        while (L < 256 && b.seg[(size_t)i * 256 + L] == 0) L++;
        bool full_ok = L + 1 <= cJSON_GetArraySize(fid) && tg[L - 1] == eot;
        for (int j = 0; full_ok && j < L; j++) full_ok = in[j] == cJSON_GetArrayItem(fid, j)->valueint;
        full_ok = full_ok && cJSON_GetArrayItem(fid, L)->valueint == eot;
        CHECK(full_ok, "golden %d: training ids = full_ids[:%d] ending in <|eot_id|>", i, L + 1);
        // Loss region: exactly the answer tokens and <|eot_id|>.
        int first = 0;
        while (first < L && tg[first] == -1) first++;
        bool region = first == pr.n_prompt_ids - 1;
        for (int j = first; region && j < L; j++) region = tg[j] == in[j + 1] || (j == L - 1 && tg[j] == eot);
        char *ans = tokenizer_decode(tok, tg + first, (size_t)(L - 1 - first), false);
        char *ref = data_strip_dup(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(conv, "messages"),
                                   cJSON_GetArraySize(cJSON_GetObjectItem(conv, "messages")) - 1), "content")->valuestring);
        CHECK(region && ans && !strcmp(ans, ref), "golden %d: loss covers '%s' + <|eot_id|> (decoded '%s')", i, ref, ans);
        free(ans);
        free(ref);
        i++;
    }
    halo_batch_free(&b);
    dataset_free(ds);
    cJSON_Delete(g);

    // ViGGO train.csv: all 5103 rows, Llama 3 chat format, none longer than 512 positions.
    dataset_config c;
    dataset_config_default(&c);
    c.preset = "viggo";
    c.path = test_shared_path("data/viggo/train.csv");
    c.seq_len = 512;
    ds = NULL;
    CHECK(dataset_load(&c, tok, &ds) == 0, "viggo load: %s", halo_error());
    if (ds) {
        const dataset_stats *st = dataset_get_stats(ds);
        char sum[1024];
        dataset_summary(ds, sum, sizeof sum);
        printf("viggo train.csv with llama3: %s\n", sum);
        CHECK(st->n_examples[0] + st->n_examples[1] == 5103 && st->n_examples[1] == 255 && st->n_truncated == 0,
              "viggo: 5103 rows (4848 + 255)");
        dataset_free(ds);
    }
    tokenizer_free(tok);
}

// Llama 2 format with the Llama 2 tokenizer: BOS id first, then the rest encoded as the tokenizer encodes it; the
// example ends with </s>. Plain text with stories260K: the windows are exactly [BOS] + encode(file).
static void test_real_llama2_and_text(void) {
    halo_tokenizer *tok = real_tokenizer("tokenizers/llama2");
    if (tok) {
        dataset_config c;
        dataset_config_default(&c);
        c.path = tmp_file("l2.jsonl", "{\"prompt\": \"Hi there\", \"completion\": \" Hello! \"}\n");
        c.chat = DATASET_CHAT_LLAMA2;
        c.system_prompt = "Be brief.";
        c.val_fraction = 0;
        c.seq_len = 64;
        dataset *ds = NULL;
        CHECK(dataset_load(&c, tok, &ds) == 0, "llama2 load: %s", halo_error());
        dataset_pair pr;
        if (ds && !dataset_get_pair(ds, 0, 0, &pr)) {
            const char *body = "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST]";
            CHECK(!strncmp(pr.prompt_text, "<s>", 3) && !strcmp(pr.prompt_text + 3, body), "llama2 prompt '%s'", pr.prompt_text);
            int32_t *ids;
            size_t n;
            tokenizer_encode(tok, body, strlen(body), true, &ids, &n);
            bool same = (size_t)pr.n_prompt_ids == n && ids[0] == tokenizer_bos_id(tok);
            for (size_t j = 0; same && j < n; j++) same = pr.prompt_ids[j] == ids[j];
            CHECK(same, "llama2 prompt ids = encode(text, with BOS)");
            free(ids);
            halo_batch b;
            halo_batch_alloc(&b, 1, 64);
            dataset_iter it = {0, 0, 0};
            dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, NULL);
            int L = 0;
            while (L < 64 && b.seg[L] == 0) L++;
            CHECK(b.targets[L - 1] == tokenizer_eos_id(tok) && b.targets[pr.n_prompt_ids - 2] == -1 &&
                  b.targets[pr.n_prompt_ids - 1] >= 0, "llama2: loss from the answer's first token to </s>");
            halo_batch_free(&b);
        }
        dataset_free(ds);
        tokenizer_free(tok);
    }
    tok = real_tokenizer("models/stories260K/tokenizer.json");
    if (!tok) return;
    const char *path = test_shared_path("data/text/tinystories_sample.txt");
    long n;
    char *text = read_all(path, &n);
    dataset_config c;
    dataset_config_default(&c);
    c.path = path;
    c.seq_len = 256;
    c.val_fraction = 0;
    c.shuffle = false;
    dataset *ds = NULL;
    CHECK(text && dataset_load(&c, tok, &ds) == 0, "tinystories load: %s", halo_error());
    if (ds) {
        int32_t *ids;
        size_t ni;
        tokenizer_encode(tok, text, (size_t)n, false, &ids, &ni);
        int64_t want_windows = (int64_t)(ni + 1 - 1 + 255) / 256;   // stream of ni + 1 tokens, windows every 256
        CHECK(dataset_size(ds, DATASET_TRAIN) == want_windows, "windows %lld want %lld",
              (long long)dataset_size(ds, DATASET_TRAIN), (long long)want_windows);
        halo_batch b;
        halo_batch_alloc(&b, 4, 256);
        dataset_iter it = {0, 0, 0};
        int k, bad = 0;
        size_t s = 0;   // stream position of the row's first input
        while (dataset_next_batch(ds, DATASET_TRAIN, &it, false, &b, &k) == 0 && k > 0)
            for (int r = 0; r < k; r++, s += 256)
                for (int t = 0; t < 256 && s + t + 1 < ni + 1; t++) {
                    int32_t want_in = s + t == 0 ? tokenizer_bos_id(tok) : ids[s + t - 1];
                    if (b.input_ids[r * 256 + t] != want_in || b.targets[r * 256 + t] != ids[s + t]) bad++;
                }
        CHECK(bad == 0 && s >= ni, "tinystories windows = [BOS] + encode(file), next-token targets (%d bad)", bad);
        free(ids);
        halo_batch_free(&b);
        dataset_free(ds);
    }
    free(text);
    tokenizer_free(tok);
}

// The shared task files load completely (with the mock encoder; the real tokenizers are tested below).
static void test_shared_files(void) {
    const char *vt = test_shared_path("data/viggo/train.csv"), *vv = test_shared_path("data/viggo/valid.csv");
    const char *gt = test_shared_path("data/gsm8k/train.jsonl"), *sq = test_shared_path("data/sql/all.jsonl");
    if (!vt || access(vt, R_OK)) { SKIP("shared data/ not found (set HALO_SHARED)"); return; }
    dataset_config c;
    dataset_config_default(&c);
    c.preset = "viggo";
    c.path = vt;
    c.val_path = vv;
    c.seq_len = 2048;   // byte-level mock: ~1.3k ids for the longest example
    dataset *ds = load(&c, &enc3);
    CHECK(ds && dataset_size(ds, DATASET_TRAIN) == 5103 && dataset_size(ds, DATASET_VAL) == 714 &&
          dataset_get_stats(ds)->n_truncated == 0, "viggo train 5103 + valid 714: %s", ds ? "" : halo_error());
    if (ds) {
        int ok = 0;
        dataset_pair pr;
        for (int64_t i = 0; i < 714; i++) {
            dataset_get_pair(ds, DATASET_VAL, i, &pr);
            ok += metric_score(METRIC_VIGGO, pr.answer, pr.answer) == 1 && has(pr.prompt_text, "### Target sentence:\n");
        }
        CHECK(ok == 714, "every viggo valid answer scores 1 against itself (%d)", ok);
        dataset_get_pair(ds, DATASET_VAL, 0, &pr);
        CHECK(pr.line == 2 && !strcmp(pr.answer, "give_opinion(name[SpellForce 3], release_year[2017], developer[Grimlore Games], rating[poor])"),
              "first valid row");
        dataset_free(ds);
    }
    dataset_config_default(&c);
    c.preset = "gsm8k";
    c.path = gt;
    c.val_fraction = 0;
    ds = load(&c, &enc3);
    CHECK(ds && dataset_size(ds, DATASET_TRAIN) == 7473, "gsm8k train 7473");
    dataset_free(ds);
    dataset_config_default(&c);
    c.preset = "sql";
    c.path = sq;
    c.val_count = 200;
    c.seed = 0;
    ds = load(&c, &enc3);
    CHECK(ds && dataset_size(ds, DATASET_TRAIN) == 800 && dataset_size(ds, DATASET_VAL) == 200 &&
          !strcmp(dataset_metric_name(ds), "sql"), "sql 800 train / 200 eval");
    dataset_free(ds);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/halo_test_dataset_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_csv();
    test_csv_dataset();
    test_check_vocab();
    test_json_array();
    test_sharegpt();
    test_chat_template();
    test_jsonl();
    test_chat_render();
    test_presets();
    test_split();
    test_batching();
    test_iterator();
    test_llama3_loss_region();
    test_multi_turn_loss();
    test_tool_calls();
    test_text();
    test_metrics();
    test_shared_files();
    test_real_llama3();
    test_real_multi_turn();
    test_real_llama3_template();
    test_real_llama2_and_text();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    TEST_END();
}
