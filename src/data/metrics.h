// Task metrics of the HALO paper's fine-tuning evaluations (section 7 of docs/halo-method.md): each scores one
// generated answer against the reference as 1 (correct) or 0.
#ifndef HALO_METRICS_H
#define HALO_METRICS_H

typedef enum { METRIC_EXACT, METRIC_VIGGO, METRIC_GSM8K, METRIC_SQL } halo_metric;

// "exact", "viggo", "gsm8k", "sql". Returns HALO_OK or HALO_ERR naming the known metrics.
int metric_from_name(const char *name, halo_metric *out);
const char *metric_name(halo_metric m);
// 1.0 when pred is correct for ref, else 0.0.
//  viggo: same function name (text before "(") and the same attribute list, sorted; attributes are split at the
//         commas outside [...] so "genres[a, b]" is one attribute; names and values are compared after stripping
//         spaces around them (and around each comma-separated part of a value). Text after the last ")" fails.
//  gsm8k: the text after the last "####" equals the reference's, both stripped, commas between digits removed
//         ("1,000" == "1000"); a prediction without "####" fails.
//  sql, exact: equal after stripping leading/trailing whitespace (decoders differ in a leading space).
double metric_score(halo_metric m, const char *pred, const char *ref);
// The canonical form the viggo metric compares ("fn(a[x], b[y, z])", attributes sorted), malloc'ed, or NULL when
// the text is not a function call.
char *metric_viggo_canonical(const char *mr);
// The gsm8k final answer (after the last "####", stripped, digit-group commas removed), malloc'ed, or NULL.
char *metric_gsm8k_answer(const char *text);
#endif
