// Small cJSON helpers shared by the readers of user files.
#ifndef HALO_UTIL_JSON_H
#define HALO_UTIL_JSON_H
#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>

// v is a JSON number holding a whole value in [lo, hi] (NaN and infinities fail): the test to pass before casting
// it to an integer type, since the cast of an out-of-range double is undefined.
static inline bool json_whole(const cJSON *v, double lo, double hi) {
    return cJSON_IsNumber(v) && v->valuedouble >= lo && v->valuedouble <= hi && v->valuedouble == floor(v->valuedouble);
}
#endif
