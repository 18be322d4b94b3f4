// A small Jinja2 interpreter for the chat templates Hugging Face models ship in tokenizer_config.json. It renders
// them as transformers' apply_chat_template does: ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True, extensions=[loopcontrols]) with HF's tojson filter and the raise_exception/strftime_now
// globals. Errors a template or its input can cause return HALO_ERR with "WHERE:LINE: message" (halo_error()).
// A parsed template is immutable: rendering it from several threads at once is safe.
#ifndef HALO_JINJA_H
#define HALO_JINJA_H
#include <cjson/cJSON.h>

typedef struct jinja_template jinja_template;

// Parses a template. `where` names it in messages ("…/tokenizer_config.json chat_template").
int jinja_parse(const char *src, const char *where, jinja_template **out);
// Renders with `vars` (a cJSON object whose members are the globals: messages, bos_token, eos_token,
// add_generation_prompt, tools, …; NULL for none). *out is malloc'ed, NUL-terminated.
// JSON numbers that are integral (and below 2^53) are ints, others floats: cJSON keeps no "1.0" vs "1".
int jinja_render(const jinja_template *t, const cJSON *vars, char **out);
void jinja_free(jinja_template *t);

#endif
